# Cascade Mask R-CNN + UniRepLKNet-XL (ImageNet-22K), COCO, 3x schedule, 8 GPUs x 2 images.
# Training starts from the ImageNet checkpoint below (the release left it at None); put the file there or pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth
_base_ = [
    '../_base_/cascade-mask-rcnn_unireplknet_fpn_4conv1fc-giou.py', '../_base_/coco_instance_3x_detr_aug.py',
]
paper_result = dict(
    source='UniRepLKNet paper (../shared/seeds/001_09b0eea5496a55a5.txt), Table 7: COCO val',
    metric='box AP (mask AP in mask_value)', value=56.4, mask_value=49.0)
model = dict(
    backbone=dict(
        depths=(3, 3, 27, 3),
        dims=(256, 512, 1024, 2048),
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.7, decay_type='layer_wise'))
