# MMSegmentation's ADE20K 512x512 dataset config, 2 images per GPU, with test images resized to a multiple of 32.
_base_ = './ade20k.py'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2048, 512), flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='ResizeToMultiple', size_divisor=32),
        dict(type='RandomFlip'),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='ImageToTensor', keys=['img']),
        dict(type='Collect', keys=['img']),
    ]),
]
data = dict(samples_per_gpu=2, val=dict(pipeline=test_pipeline), test=dict(pipeline=test_pipeline))
