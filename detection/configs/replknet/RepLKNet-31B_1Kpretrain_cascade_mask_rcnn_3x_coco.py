# Cascade Mask R-CNN + RepLKNet-31B (ImageNet-1K pretrained), COCO, 3x schedule.
_base_ = '../_base_/cascade-mask-rcnn_replknet_fpn_3x_coco.py'
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 9: COCO',
    metric='box AP (mask AP in mask_value)', value=52.2, mask_value=45.2)
