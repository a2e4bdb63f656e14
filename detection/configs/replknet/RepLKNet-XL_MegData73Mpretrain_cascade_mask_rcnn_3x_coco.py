# Cascade Mask R-CNN + RepLKNet-XL (MegData73M pretrained), COCO, 3x schedule.
# XL: no small kernel, 1.5x wide depthwise conv, a BN on every returned feature, inception normalisation (127.5).
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py', '../_base_/coco_instance_3x_autoaugment.py',
]
model = dict(
    backbone=dict(large_kernel_sizes=(27, 27, 27, 13), channels=(256, 512, 1024, 2048), small_kernel=None,
                  dw_ratio=1.5, norm_intermediate_features=True, drop_path_rate=0.5),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
img_norm_cfg = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)
multi_scale = [(short_side, 1333) for short_side in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='AutoAugment', policies=[
        [dict(type='Resize', img_scale=multi_scale, multiscale_mode='value', keep_ratio=True)],
        [dict(type='Resize', img_scale=[(400, 1333), (500, 1333), (600, 1333)], multiscale_mode='value',
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='Resize', img_scale=multi_scale, multiscale_mode='value', override=True, keep_ratio=True)],
    ]),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(1333, 800), flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='RandomFlip'),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='Pad', size_divisor=32),
        dict(type='ImageToTensor', keys=['img']),
        dict(type='Collect', keys=['img']),
    ]),
]
data = dict(train=dict(pipeline=train_pipeline), val=dict(pipeline=test_pipeline), test=dict(pipeline=test_pipeline))
