# The UniRepLKNet ADE20K schedule (UniRepLKNet paper, appendix): AdamW lr 1e-4, wd 0.05, layer-wise LR decay
# (replk_mm/layer_decay.py), 1500 linear warm-up iterations then poly decay (power 1.0) to 0 at 160k iterations;
# checkpoint + mIoU every 4000 iterations, the best mIoU kept.
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optimizer = dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
optim_wrapper = dict(
    optimizer=optimizer,
    constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000, max_keep_ckpts=20, save_best='mIoU'))
