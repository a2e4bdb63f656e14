# UperNet + RepLKNet-XL (MegData73M pretrained), ADE20K 640x640.
# XL has no small kernel, a 1.5x wide depthwise conv and a BN on every returned feature, and was pretrained with
# mean = std = 127.5 (inception normalisation). The release's config also fed the *test* pipeline to training; here
# training uses the training pipeline.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/ade20k_640x640_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/replknet_adamw_poly_160k.py',
]
model = dict(
    backbone=dict(large_kernel_sizes=(27, 27, 27, 13), channels=(256, 512, 1024, 2048), small_kernel=None,
                  dw_ratio=1.5, norm_intermediate_features=True, drop_path_rate=0.5),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
img_norm_cfg = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)
crop_size = (640, 640)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2560, 640), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2560, 640), flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='ResizeToMultiple', size_divisor=32),
        dict(type='RandomFlip'),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='ImageToTensor', keys=['img']),
        dict(type='Collect', keys=['img']),
    ]),
]
data = dict(train=dict(pipeline=train_pipeline), val=dict(pipeline=test_pipeline), test=dict(pipeline=test_pipeline))
