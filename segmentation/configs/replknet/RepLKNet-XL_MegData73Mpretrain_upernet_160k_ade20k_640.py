# UperNet + RepLKNet-XL (MegData73M pretrained), ADE20K 640x640.
# XL has no small kernel, a 1.5x wide depthwise conv and a BN on every returned feature, and was pretrained with
# mean = std = 127.5 (inception normalisation). The release's config also fed the *test* pipeline to training; here
# training uses the training pipeline.
_base_ = [
    '../_base_/upernet_replknet.py', '../_base_/ade20k_640_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_replknet_160k.py',
]
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=55.2)
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(large_kernel_sizes=(27, 27, 27, 13), channels=(256, 512, 1024, 2048), small_kernel=None,
                  dw_ratio=1.5, norm_intermediate_features=True, drop_path_rate=0.5),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
