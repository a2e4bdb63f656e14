# Cascade Mask R-CNN + UniRepLKNet-S (ImageNet-22K), COCO, 3x schedule, 8 GPUs x 2 images.
# casc_mask_rcnn_unireplknet_s_in1k_fpn_3x_coco.py with the ImageNet-22K checkpoint.
_base_ = './casc_mask_rcnn_unireplknet_s_in1k_fpn_3x_coco.py'
paper_result = dict(value=54.3, mask_value=47.1)
model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_s_in22k_to_in1k_384_acc86.44.pth')))
