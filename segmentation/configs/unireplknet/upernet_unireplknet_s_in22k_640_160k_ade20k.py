# UperNet + UniRepLKNet-S (ImageNet-22K), ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
_base_ = [
    '../_base_/upernet_unireplknet.py', '../_base_/ade20k_640_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_unireplknet_160k.py',
]
paper_result = dict(
    source='UniRepLKNet paper (Ding et al., CVPR 2024), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=51.9)
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.3,
        with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_s_in22k_to_in1k_384_acc86.44.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))
