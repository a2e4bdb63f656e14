# UperNet with a UniRepLKNet backbone: MMSegmentation's own upernet_r50.py with the backbone swapped in.
# Each leaf config sets the backbone size, the head input widths and the ImageNet checkpoint.
_base_ = 'mmseg::_base_/models/upernet_r50.py'
custom_imports = dict(imports=['replk_mm.register_mmseg'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='UniRepLKNetBackbone',
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.3,
        with_cp=False,
        attempt_use_lk_impl=False,  # the iGEMM kernel is slow at 2 images per GPU; enable it once installed
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
