# The UniRepLKNet ADE20K schedule: AdamW with layer-wise LR decay, poly decay after a 1500-iteration linear warmup,
# 160k iterations at 2 images/GPU x 8 GPUs, checkpoint + mIoU evaluation every 4000 iterations.
optimizer = dict(
    type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05,
    constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))
optimizer_config = dict()
lr_config = dict(policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                 by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=160000)
checkpoint_config = dict(by_epoch=False, interval=4000, max_keep_ckpts=20)
evaluation = dict(interval=4000, metric='mIoU', save_best='mIoU')
