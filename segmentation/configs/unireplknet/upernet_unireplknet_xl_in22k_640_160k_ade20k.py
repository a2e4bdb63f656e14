# UperNet + UniRepLKNet-XL (ImageNet-22K), ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
# upernet_unireplknet_s_in22k_640_160k_ade20k.py with another backbone size.
# The release has no XL segmentation config: drop path and layer decay are L's.
_base_ = './upernet_unireplknet_s_in22k_640_160k_ade20k.py'
paper_result = dict(value=55.2)
model = dict(
    backbone=dict(
        dims=(256, 512, 1024, 2048),
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.85))
