# Cascade Mask R-CNN + RepLKNet-31B (ImageNet-22K pretrained), COCO, 3x schedule.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py', '../_base_/coco_instance_3x_autoaugment.py',
]
