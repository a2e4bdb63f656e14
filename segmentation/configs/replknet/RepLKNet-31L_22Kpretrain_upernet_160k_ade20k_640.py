# UperNet + RepLKNet-31L (ImageNet-22K pretrained), ADE20K 640x640.
_base_ = [
    '../_base_/upernet_replknet.py', '../_base_/ade20k_640_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_replknet_160k.py',
]
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=52.4)
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(channels=(192, 384, 768, 1536), drop_path_rate=0.3),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
