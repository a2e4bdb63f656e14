# UperNet + UniRepLKNet-L, ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
# As released.
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k_640x640_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/unireplknet_adamw_layer_decay_160k.py',
]
model = dict(
    backbone=dict(
        depths=(3, 3, 27, 3),
        dims=(192, 384, 768, 1536),
        drop_path_rate=0.4,
        with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_l_in22k_to_in1k_384_acc87.88.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150))
optimizer = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.85, decay_type='layer_wise'))
