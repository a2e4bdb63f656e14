# Cascade Mask R-CNN + UniRepLKNet-S (ImageNet-1K), COCO, 3x schedule, 8 GPUs x 2 images.
# Training starts from the ImageNet checkpoint below (the release left it at None); put the file there or pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/unireplknet_s_in1k_224_acc83.91.pth
_base_ = [
    '../_base_/cascade-mask-rcnn_unireplknet_fpn_4conv1fc-giou.py', '../_base_/coco_instance_3x_detr_aug.py',
]
paper_result = dict(
    source='UniRepLKNet paper (Ding et al., CVPR 2024), Table 7: COCO val',
    metric='box AP (mask AP in mask_value)', value=53.0, mask_value=45.9)
model = dict(
    backbone=dict(
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_s_in1k_224_acc83.91.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.8, decay_type='layer_wise'))
