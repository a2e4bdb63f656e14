# Cascade Mask R-CNN + RepLKNet-XL (MegData73M pretrained), COCO, 3x schedule.
# XL: no small kernel, 1.5x wide depthwise conv, a BN on every returned feature, inception normalisation (127.5).
_base_ = '../_base_/cascade-mask-rcnn_replknet_fpn_3x_coco.py'
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 9: COCO',
    metric='box AP (mask AP in mask_value)', value=55.5, mask_value=48.0)
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(large_kernel_sizes=(27, 27, 27, 13), channels=(256, 512, 1024, 2048), small_kernel=None,
                  dw_ratio=1.5, norm_intermediate_features=True, drop_path_rate=0.5),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
