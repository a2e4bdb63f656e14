# Cascade Mask R-CNN + RepLKNet-31L (ImageNet-22K pretrained), COCO, 3x schedule.
# The drop-path rate of the release's 31L detector is not recorded; 0.6 is the 31B value.
_base_ = '../_base_/cascade-mask-rcnn_replknet_fpn_3x_coco.py'
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 9: COCO',
    metric='box AP (mask AP in mask_value)', value=53.9, mask_value=46.5)
model = dict(
    backbone=dict(channels=(192, 384, 768, 1536)),
    neck=dict(in_channels=[192, 384, 768, 1536]))
