# Cascade Mask R-CNN + UniRepLKNet-T, COCO, 3x schedule, 8 GPUs x 2 images.
# Training starts from the ImageNet checkpoint below (the release left it at None); put the file there or pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/unireplknet_t_in1k_224_acc83.21.pth
_base_ = [
    '../_base_/models/cascade_mask_rcnn_unireplknet_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py', '../_base_/coco_instance_3x_autoaugment.py',
]
model = dict(
    backbone=dict(
        depths=(3, 3, 18, 3),
        dims=(80, 160, 320, 640),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_t_in1k_224_acc83.21.pth')),
    neck=dict(in_channels=[80, 160, 320, 640]))
optimizer = dict(
    _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05,
    constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.8, decay_type='layer_wise'))
