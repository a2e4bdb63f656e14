# UperNet + RepLKNet-31B (ImageNet-1K pretrained), Cityscapes 769x769 crops, sliding-window test, 80k iterations.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/cityscapes_769x769.py',
    '../_base_/default_runtime.py', '../_base_/schedules/replknet_adamw_poly_160k.py',
]
model = dict(
    decode_head=dict(num_classes=19, align_corners=True),
    auxiliary_head=dict(num_classes=19, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
data = dict(samples_per_gpu=2)
runner = dict(max_iters=80000)
checkpoint_config = dict(interval=8000)
evaluation = dict(interval=8000)
