# UperNet + RepLKNet-31L (ImageNet-22K pretrained), ADE20K 640x640.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/ade20k_640x640_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/replknet_adamw_poly_160k.py',
]
model = dict(
    backbone=dict(channels=(192, 384, 768, 1536), drop_path_rate=0.3),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
