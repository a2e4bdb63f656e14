# 3x schedule (36 epochs, LR steps at 27 and 33, 500-iteration linear warmup), 2 images/GPU x 8 GPUs, with the
# DETR-style AutoAugment of the release: multi-scale short side 480-800 (long side 1333), or resize 400-600 +
# crop 384-600 + multi-scale resize. The optimizer itself is set by the family's config.
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
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
data = dict(samples_per_gpu=2, train=dict(pipeline=train_pipeline))
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[27, 33])
runner = dict(type='EpochBasedRunner', max_epochs=36)
checkpoint_config = dict(interval=1, max_keep_ckpts=5, save_last=True)
evaluation = dict(metric=['bbox', 'segm'], save_best='auto')
