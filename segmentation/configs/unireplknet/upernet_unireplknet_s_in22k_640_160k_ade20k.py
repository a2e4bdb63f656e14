# UperNet + UniRepLKNet-S, ADE20K, 640x640 crops, 160k iterations on 8 GPUs x 2 images.
# As released.
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k_640x640_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/unireplknet_adamw_layer_decay_160k.py',
]
model = dict(
    backbone=dict(
        depths=(3, 3, 27, 3),
        dims=(96, 192, 384, 768),
        drop_path_rate=0.3,
        with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_s_in22k_to_in1k_384_acc86.44.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
optimizer = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))
