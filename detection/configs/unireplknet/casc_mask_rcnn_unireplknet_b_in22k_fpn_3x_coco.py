# Cascade Mask R-CNN + UniRepLKNet-B (ImageNet-22K), COCO, 3x schedule, 8 GPUs x 2 images.
# casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py with another backbone size.
_base_ = './casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py'
paper_result = dict(value=54.8, mask_value=47.4)
model = dict(
    backbone=dict(
        dims=(128, 256, 512, 1024),
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_b_in22k_to_in1k_384_acc87.40.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
