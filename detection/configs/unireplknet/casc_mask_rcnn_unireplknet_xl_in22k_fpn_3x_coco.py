# Cascade Mask R-CNN + UniRepLKNet-XL (ImageNet-22K), COCO, 3x schedule, 8 GPUs x 2 images.
# casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py with another backbone size.
_base_ = './casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco.py'
paper_result = dict(value=56.4, mask_value=49.0)
model = dict(
    backbone=dict(
        dims=(256, 512, 1024, 2048),
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
