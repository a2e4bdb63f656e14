# UperNet + UniRepLKNet-T, ADE20K, 512x512 crops, 160k iterations on 8 GPUs x 2 images.
# As released: decay_rate 1 means no layer-wise decay (num_layers 9 then only names the id range, issue #13).
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k_512x512_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/unireplknet_adamw_layer_decay_160k.py',
]
model = dict(
    backbone=dict(
        depths=(3, 3, 18, 3),
        dims=(80, 160, 320, 640),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_t_in1k_224_acc83.21.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))
optimizer = dict(paramwise_cfg=dict(num_layers=9, decay_rate=1.0, decay_type='layer_wise'))
