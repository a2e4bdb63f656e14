# Cascade Mask R-CNN + UniRepLKNet-L (ImageNet-22K), COCO, 3x schedule, 8 GPUs x 2 images.
# casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py with another backbone size.
_base_ = './casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py'
paper_result = dict(value=55.8, mask_value=48.4)
model = dict(
    backbone=dict(
        dims=(192, 384, 768, 1536),
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_l_in22k_to_in1k_384_acc87.88.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
