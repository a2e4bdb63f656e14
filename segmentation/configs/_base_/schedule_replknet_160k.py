# The RepLKNet segmentation schedule: AdamW (lr 2e-4, wd 0.05, no weight decay on norm layers), 1500 linear warm-up
# iterations then poly decay (power 1.0). The release trained on large clusters with fewer iterations (e.g. 40k
# iterations on 64 GPUs x 2 images); this is the 8-GPU x 2-image equivalent, checkpoint + mIoU every 16000.
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optimizer = dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)
optim_wrapper = dict(optimizer=optimizer, paramwise_cfg=dict(norm_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
default_hooks = dict(checkpoint=dict(save_best='mIoU'))
