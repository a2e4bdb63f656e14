# UperNet with a UniRepLKNet backbone (the release's upernet_r50_nopretrain.py with the backbone swapped in).
# Variant configs set the backbone size, the head input widths and the ImageNet checkpoint.
custom_imports = dict(imports=['mmseg_custom', 'mmcv_custom'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained=None,
    backbone=dict(
        type='UniRepLKNetBackbone',
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.3,
        with_cp=False,
        attempt_use_lk_impl=False,  # the iGEMM kernel is slow at 2 images per GPU; enable it once installed
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    decode_head=dict(
        type='UPerHead',
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
