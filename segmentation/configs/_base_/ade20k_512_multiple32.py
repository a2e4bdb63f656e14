# MMSegmentation's ADE20K (512x512 crops, test scale 2048x512) with 2 images per GPU (8 GPUs x 2 = the papers' 16)
# and test images resized to a multiple of 32, as in the releases.
_base_ = 'mmseg::_base_/datasets/ade20k.py'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
