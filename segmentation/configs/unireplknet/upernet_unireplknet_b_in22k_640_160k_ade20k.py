# UperNet + UniRepLKNet-B (ImageNet-22K), ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
# upernet_unireplknet_s_in22k_640_160k_ade20k.py with another backbone size.
_base_ = './upernet_unireplknet_s_in22k_640_160k_ade20k.py'
paper_result = dict(value=53.5)
model = dict(
    backbone=dict(
        dims=(128, 256, 512, 1024),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_b_in22k_to_in1k_384_acc87.40.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
