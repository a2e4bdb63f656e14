# COCO instance segmentation, 3x schedule, as in both releases: MMDetection's own coco_instance.py, schedule_1x.py
# and default_runtime.py, with the DETR-style augmentation (multi-scale 480-800 short side, or resize + crop +
# resize), 8 GPUs x 2 images, 36 epochs with LR steps at 27 and 33 after 500 warm-up iterations, AdamW (lr 1e-4,
# wd 0.05) with UniRepLKNet's layer-wise decay, a checkpoint every epoch (5 kept) and the best box AP kept.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py', 'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
multi_scale = [(short_side, 1333) for short_side in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.8, decay_type='layer_wise'))
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=5, save_best='coco/bbox_mAP'))
