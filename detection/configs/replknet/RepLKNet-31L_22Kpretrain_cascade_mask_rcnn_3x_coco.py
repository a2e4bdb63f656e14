# Cascade Mask R-CNN + RepLKNet-31L (ImageNet-22K pretrained), COCO, 3x schedule.
# The drop-path rate of the release's 31L detector is not recorded here; 0.6 is the 31B value.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py', '../_base_/coco_instance_3x_autoaugment.py',
]
model = dict(
    backbone=dict(channels=(192, 384, 768, 1536)),
    neck=dict(in_channels=[192, 384, 768, 1536]))
