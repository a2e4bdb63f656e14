# UperNet + UniRepLKNet-L (ImageNet-22K), ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
# upernet_unireplknet_s_in22k_640_160k_ade20k.py with another backbone size.
_base_ = './upernet_unireplknet_s_in22k_640_160k_ade20k.py'
paper_result = dict(value=54.5)
model = dict(
    backbone=dict(
        dims=(192, 384, 768, 1536),
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_l_in22k_to_in1k_384_acc87.88.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.85))
