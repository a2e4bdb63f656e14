# Cascade Mask R-CNN with FPN on a RepLKNet-31B backbone (type 'RepLKNet', as in the RepLKNet release), COCO 3x,
# trained with AdamW lr 4e-4 without weight decay on norm layers instead of the layer-wise decay. Set the ImageNet
# weights with --cfg-options model.backbone.pretrained=/path/to/RepLKNet-31B_....pth
_base_ = ['./cascade-mask-rcnn_unireplknet_fpn_4conv1fc-giou.py', './coco_instance_3x_detr_aug.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='RepLKNet',
        large_kernel_sizes=(31, 29, 27, 13),
        layers=(2, 2, 18, 2),
        channels=(128, 256, 512, 1024),
        drop_path_rate=0.6,
        small_kernel=5,
        dw_ratio=1,
        out_indices=(0, 1, 2, 3),
        use_checkpoint=True,
        small_kernel_merged=False,
        use_sync_bn=True,
        pretrained=None),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.))
