# UperNet + UniRepLKNet-S (ImageNet-22K), ADE20K, 512x512 crops, 160k iterations on 8 GPUs x 2 images.
# upernet_unireplknet_s_512_160k_ade20k.py with the ImageNet-22K checkpoint.
# The paper reports the 22K-pretrained S only with 640 crops (51.9, the 640 config), so no number.
_base_ = './upernet_unireplknet_s_512_160k_ade20k.py'
paper_result = dict(value=None)
model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_s_in22k_to_in1k_384_acc86.44.pth')))
