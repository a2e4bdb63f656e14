# The RepLKNet segmentation schedule: AdamW (lr 2e-4, wd 0.05, no weight decay on norm layers), poly decay after
# a linear warmup. The release trained on large clusters with fewer iterations (e.g. 40k iterations on 64 GPUs x 2
# images); this is the equivalent 8-GPU x 2-image schedule.
optimizer = dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05,
                 paramwise_cfg=dict(norm_decay_mult=0.))
optimizer_config = dict()
lr_config = dict(policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                 by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=160000)
checkpoint_config = dict(by_epoch=False, interval=16000)
evaluation = dict(interval=16000, metric='mIoU', save_best='mIoU')
