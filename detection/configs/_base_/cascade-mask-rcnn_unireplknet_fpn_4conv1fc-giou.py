# Cascade Mask R-CNN with FPN on a UniRepLKNet backbone, as in the UniRepLKNet release: MMDetection's own
# cascade-mask-rcnn_r50_fpn.py with the backbone swapped in and 4conv1fc SyncBN box heads with GIoU loss (the box
# heads of MMDetection's ConvNeXt 3x recipe). Leaf configs set the backbone size, neck widths and checkpoint.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['replk_mm.register_mmdet'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='UniRepLKNetBackbone',
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.5,
        with_cp=True,
        attempt_use_lk_impl=False,  # the iGEMM kernel is slow at 2 images per GPU; enable it once installed
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
            fc_out_channels=1024, roi_feat_size=7, num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))
