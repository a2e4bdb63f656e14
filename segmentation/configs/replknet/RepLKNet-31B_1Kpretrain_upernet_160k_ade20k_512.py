# UperNet + RepLKNet-31B (ImageNet-1K pretrained), ADE20K 512x512.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/ade20k_512x512_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/replknet_adamw_poly_160k.py',
]
