# UperNet + UniRepLKNet-N (ImageNet-1K), ADE20K, 512x512 crops, 160k iterations on 8 GPUs x 2 images.
# New (issue #13): N is not in the paper, so there is no number to reproduce. Stage 2 has 8 blocks, so the
# layer ids stop at 3 + 7 // 3 = 5 and num_layers is 6; decay_rate 1 as for T.
_base_ = [
    '../_base_/upernet_unireplknet.py', '../_base_/ade20k_512_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_unireplknet_160k.py',
]
paper_result = dict(
    source='UniRepLKNet paper (Ding et al., CVPR 2024), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=None)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        depths=(2, 2, 8, 2),
        dims=(80, 160, 320, 640),
        drop_path_rate=0.1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_n_in1k_224_acc81.64.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6, decay_rate=1.0, decay_type='layer_wise'))
