# UperNet + UniRepLKNet-T (ImageNet-1K), ADE20K, 512x512 crops, 160k iterations on 8 GPUs x 2 images.
# As released: decay_rate 1 means no layer-wise decay (num_layers 9 then only names the id range, issue #13).
_base_ = [
    '../_base_/upernet_unireplknet.py', '../_base_/ade20k_512_multiple32.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedule_unireplknet_160k.py',
]
paper_result = dict(
    source='UniRepLKNet paper (Ding et al., CVPR 2024), Table 8: ADE20K val',
    metric='mIoU (single-scale)', value=48.6)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        depths=(3, 3, 18, 3),
        dims=(80, 160, 320, 640),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_t_in1k_224_acc83.21.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=9, decay_rate=1.0, decay_type='layer_wise'))
