# UperNet + RepLKNet-31B (ImageNet-22K pretrained), ADE20K 640x640.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/ade20k_640x640_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/replknet_adamw_poly_160k.py',
]
model = dict(backbone=dict(drop_path_rate=0.3))
