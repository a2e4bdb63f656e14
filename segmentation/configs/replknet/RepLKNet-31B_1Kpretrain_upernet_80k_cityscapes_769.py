# UperNet + RepLKNet-31B (ImageNet-1K pretrained), Cityscapes 769x769 crops, sliding-window test, 80k iterations
# on 8 GPUs x 2 images.
_base_ = [
    '../_base_/upernet_replknet.py', 'mmseg::_base_/datasets/cityscapes_769x769.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_replknet_160k.py',
]
paper_result = dict(source='RepLKNet paper (Ding et al., CVPR 2022), Table 7: Cityscapes val',
                    metric='mIoU (single-scale)', value=83.1)
crop_size = (769, 769)
model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=19, align_corners=True),
    auxiliary_head=dict(num_classes=19, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(513, 513)))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=80000),
]
train_cfg = dict(max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
