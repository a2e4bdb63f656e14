"""Layer-wise learning-rate decay for UniRepLKNet detectors and segmentors (MMEngine's optimizer wrapper).

Config (mmseg 1.x / mmdet 3.x):
    optim_wrapper = dict(type='OptimWrapper',
                         optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                         constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
                         paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))

With M = num_layers and N = M + 2, parameter `name` gets layer id i and learning rate base_lr * decay_rate**(N - i - 1):
  layer_wise: backbone.downsample_layers.0 -> 0, .1 -> 2, .2 -> 3, .3 -> M; backbone.stages.0 -> 1, stages.1 -> 2,
              stages.2.{b} -> 3 + b // 3, stages.3 -> M; everything else (neck, heads, backbone.norm0..3) -> M + 1.
  stage_wise: backbone.downsample_layers.* -> 0, backbone.stages.i -> i + 1, everything else -> N - 1.
Weight decay is 0 for 1-D parameters, biases, pos_embed and cls_token. `dw_scale` != 1 further scales the learning
rate of depthwise ('dwconv') parameters, in groups of their own.

`layer_id` and `param_groups` are plain functions (no MMEngine needed); `register_constructor` registers the
constructor class into MMEngine's OPTIM_WRAPPER_CONSTRUCTORS (called by replk_mm.register_mmseg / register_mmdet).
"""
import json
import logging

import torch.distributed as dist

_logger = logging.getLogger(__name__)

DECAY_TYPES = ('layer_wise', 'stage_wise')


def layer_id(name: str, num_layers: int, decay_type: str = 'layer_wise') -> int:
    """Layer id of a detector/segmentor parameter, e.g. 'backbone.stages.2.7.pwconv1.1.weight' -> 5."""
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    rest_of_network = num_layers + 1
    parts = name.split('.')
    if parts[0] != 'backbone' or len(parts) < 3 or parts[1] not in ('downsample_layers', 'stages'):
        return rest_of_network
    index = int(parts[2])
    if decay_type == 'stage_wise':
        return 0 if parts[1] == 'downsample_layers' else index + 1
    if parts[1] == 'downsample_layers':
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[index]
    if index == 2:
        return 3 + int(parts[3]) // 3
    return {0: 1, 1: 2, 3: num_layers}[index]


def _validated(paramwise_cfg: dict) -> dict:
    missing = [key for key in ('num_layers', 'decay_rate') if key not in paramwise_cfg]
    if missing:
        raise ValueError(f'paramwise_cfg of UniRepLKNetLearningRateDecayOptimizerConstructor needs {missing}, e.g. '
                         "paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise')")
    return dict(num_layers=paramwise_cfg['num_layers'], decay_rate=paramwise_cfg['decay_rate'],
                decay_type=paramwise_cfg.get('decay_type', 'layer_wise'), dw_scale=paramwise_cfg.get('dw_scale', 1))


def param_groups(named_parameters, base_lr: float, base_wd: float, paramwise_cfg: dict) -> list:
    """Optimizer parameter groups: one per (layer id, decay / no decay[, dwconv]), each with 'lr' and 'lr_scale'."""
    cfg = _validated(paramwise_cfg)
    num_ids = cfg['num_layers'] + 2
    groups = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if param.ndim == 1 or name.endswith('.bias') or name in ('pos_embed', 'cls_token'):
            decay_name, weight_decay = 'no_decay', 0.
        else:
            decay_name, weight_decay = 'decay', base_wd
        layer = layer_id(name, cfg['num_layers'], cfg['decay_type'])
        scale = cfg['decay_rate'] ** (num_ids - layer - 1)
        group_name = f'layer_{layer}_{decay_name}'
        if cfg['dw_scale'] != 1 and 'dwconv' in name:
            group_name += '_dwconv'
            scale *= cfg['dw_scale']
        group = groups.setdefault(group_name, dict(
            params=[], param_names=[], weight_decay=weight_decay, lr=scale * base_lr, lr_scale=scale,
            group_name=group_name))
        group['params'].append(param)
        group['param_names'].append(name)
    if not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        summary = {name: {k: v for k, v in g.items() if k != 'params'} for name, g in groups.items()}
        _logger.info('Param groups = %s', json.dumps(summary, indent=2))
    return list(groups.values())


def register_constructor():
    """Register UniRepLKNetLearningRateDecayOptimizerConstructor into MMEngine's OPTIM_WRAPPER_CONSTRUCTORS."""
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    class UniRepLKNetLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
        """MMEngine's default constructor with `add_params` replaced by the layer-wise decay groups."""

        def add_params(self, params, module, *args, **kwargs):
            params.extend(param_groups(module.named_parameters(), self.base_lr, self.base_wd, self.paramwise_cfg))

    if UniRepLKNetLearningRateDecayOptimizerConstructor.__name__ not in OPTIM_WRAPPER_CONSTRUCTORS:
        OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=UniRepLKNetLearningRateDecayOptimizerConstructor)
