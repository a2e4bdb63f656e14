# MMSegmentation's ADE20K 640x640 (crops of 640, test scale 2560x640) with 2 images per GPU (8 GPUs x 2 = the
# papers' 16) and test images resized to a multiple of 32, as in the releases.
_base_ = 'mmseg::_base_/datasets/ade20k_640x640.py'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
