# UperNet with a RepLKNet-31B backbone (type 'RepLKNet', as in the RepLKNet release). Set the ImageNet weights with
# --cfg-options model.backbone.pretrained=/path/to/RepLKNet-31B_....pth
_base_ = './upernet_unireplknet.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='RepLKNet',
        large_kernel_sizes=(31, 29, 27, 13),
        layers=(2, 2, 18, 2),
        channels=(128, 256, 512, 1024),
        drop_path_rate=0.5,
        small_kernel=5,
        dw_ratio=1,
        out_indices=(0, 1, 2, 3),
        use_checkpoint=True,
        small_kernel_merged=False,
        use_sync_bn=True,
        pretrained=None),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
