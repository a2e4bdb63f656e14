# UperNet + UniRepLKNet-N, ADE20K, 512x512 crops, 160k iterations on 8 GPUs x 2 images.
# New (the release has no N config, issue #13): settings by analogy with T; stage 2 has 8 blocks, so
# layer ids stop at 3 + 7 // 3 = 5 and num_layers is 6.
_base_ = [
    '../_base_/models/upernet_unireplknet.py', '../_base_/datasets/ade20k_512x512_multiple32.py',
    '../_base_/default_runtime.py', '../_base_/schedules/unireplknet_adamw_layer_decay_160k.py',
]
model = dict(
    backbone=dict(
        depths=(2, 2, 8, 2),
        dims=(80, 160, 320, 640),
        drop_path_rate=0.1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/unireplknet_n_in1k_224_acc81.64.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))
optimizer = dict(paramwise_cfg=dict(num_layers=6, decay_rate=1.0, decay_type='layer_wise'))
