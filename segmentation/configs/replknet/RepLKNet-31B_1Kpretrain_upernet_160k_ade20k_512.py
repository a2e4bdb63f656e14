# UperNet + RepLKNet-31B (ImageNet-1K pretrained), ADE20K 512x512.
_base_ = [
    '../_base_/upernet_replknet.py', '../_base_/ade20k_512_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_replknet_160k.py',
]
paper_result = dict(
    source='RepLKNet paper (Ding et al., CVPR 2022), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=49.9)
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
