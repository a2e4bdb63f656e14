"""Optimizer construction, layer-wise learning-rate decay and cosine schedules.

What this module gives `main.py`:

* `create_optimizer(args, model, ...)` -- any optimizer of timm's registry (adamw, sgd, lamb,
  lookahead_adamw, ...) built over parameter groups that carry their own `weight_decay` and
  `lr_scale`. Weight decay is skipped for 1-D tensors (norm weights, layer-scale `gamma`),
  names ending in `.bias` and the names in `model.no_weight_decay()`. Every group has an
  `lr_scale` (1.0 without layer decay), so the training loop may always set
  `group['lr'] = lr_schedule[it] * group['lr_scale']`.
* `layer_decay_assigner(model_name, layer_decay, backbone_prefix)` -- the layer-id maps of the UniRepLKNet
  release (ConvNeXt-style, 14 ids) and of RepLKNet-pytorch (14 ids), scale `layer_decay ** (13 - id)`; in a
  model that wraps the backbone (a modality adapter) the backbone's parameters are those under `backbone_prefix`.
* `cosine_scheduler(...)` -- per-iteration cosine schedule with linear warmup, identical in values
  to the release, with the `warmup_steps > 0, warmup_epochs == 0` length bug fixed.
"""
import numpy as np
from timm.optim import create_optimizer_v2

# Both id maps use ids 0..13; id 13 (head and final norm) keeps the full learning rate.
NUM_LAYER_IDS = 14


class LayerDecayValueAssigner:
    """Maps a parameter name to a layer id, and a layer id to its learning-rate scale."""

    def __init__(self, values, get_layer_id):
        self.values = list(values)
        self._get_layer_id = get_layer_id

    def get_scale(self, layer_id):
        return self.values[layer_id]

    def get_layer_id(self, name):
        return self._get_layer_id(name)


def unireplknet_layer_id(name):
    """Layer id of a UniRepLKNet parameter (the release's ConvNeXt map).

    Stem 0; stage 0 -> 1; downsample 1 and stage 1 -> 2; downsample 2 -> 3; stage 2 block b ->
    3 + b // 3 (ids 3..11 for 27 blocks); downsample 3 and stage 3 -> 12; norm/head -> 13.
    """
    parts = name.split('.')
    if parts[0] == 'downsample_layers':
        return {0: 0, 1: 2, 2: 3, 3: 12}[int(parts[1])]
    if parts[0] == 'stages':
        stage = int(parts[1])
        if stage == 2:
            return 3 + int(parts[2]) // 3
        return {0: 1, 1: 2, 3: 12}[stage]
    return NUM_LAYER_IDS - 1


def replknet_layer_id(name):
    """Layer id of a RepLKNet parameter (the RepLKNet-pytorch map).

    Stem 0; stage/transition 0 -> 1; stage/transition 1 -> 2; stage 2 block b -> 3 + b // 4
    (36 blocks -> ids 3..11); transition 2 -> 11; stage 3 -> 12; norm/head -> 13. The optional
    `stages.2.norm` (intermediate-feature norm) sits at the end of stage 2 and gets id 11.
    """
    parts = name.split('.')
    if parts[0] == 'stem':
        return 0
    if parts[0] == 'transitions':
        return {0: 1, 1: 2, 2: 11}[int(parts[1])]
    if parts[0] == 'stages':
        stage = int(parts[1])
        if stage == 2:
            return 3 + int(parts[3]) // 4 if parts[2] == 'blocks' else 11
        return {0: 1, 1: 2, 3: 12}[stage]
    return NUM_LAYER_IDS - 1


def layer_decay_assigner(model_name, layer_decay, backbone_prefix=''):
    """The LayerDecayValueAssigner for `model_name`, or None when `layer_decay` is 1.0 (off).

    `backbone_prefix`: where the backbone's parameters sit in the trained model ('backbone.' inside a modality
    adapter); they get the backbone map's ids, every other parameter (the adapter's input and output layers, new
    for the task like a fine-tuning head) the last id, i.e. the full learning rate.
    """
    if layer_decay == 1.0:
        return None
    family = model_name.lower()
    if family.startswith('unireplknet'):
        get_layer_id = unireplknet_layer_id
    elif family.startswith('replknet'):
        get_layer_id = replknet_layer_id
    else:
        raise ValueError(
            f"--layer_decay {layer_decay} needs a layer-id map, and there is none for model '{model_name}'. "
            "Layer-wise decay is defined for unireplknet_* and replknet_* / RepLKNet-* models; "
            "use one of those or pass --layer_decay 1.0.")
    values = [layer_decay ** (NUM_LAYER_IDS - 1 - i) for i in range(NUM_LAYER_IDS)]
    if backbone_prefix:
        return LayerDecayValueAssigner(values, lambda name: get_layer_id(name[len(backbone_prefix):])
                                       if name.startswith(backbone_prefix) else NUM_LAYER_IDS - 1)
    return LayerDecayValueAssigner(values, get_layer_id)


def param_groups(model, weight_decay, skip_list=(), get_num_layer=None, get_layer_scale=None,
                 filter_bias_and_bn=True):
    """Split trainable parameters into groups of equal (weight_decay, lr_scale).

    Returns a list of dicts with keys params, weight_decay, lr_scale, group_name and
    param_names (names kept for the summary printout; removed before building the optimizer).
    """
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith('.bias') or name in skip_list
        if filter_bias_and_bn and exempt:
            decay_kind, group_weight_decay = 'no_decay', 0.0
        else:
            decay_kind, group_weight_decay = 'decay', weight_decay
        if get_num_layer is not None:
            layer_id = get_num_layer(name)
            group_name = f'layer_{layer_id}_{decay_kind}'
            lr_scale = get_layer_scale(layer_id)
        else:
            group_name, lr_scale = decay_kind, 1.0
        group = groups.setdefault(group_name, {
            'params': [], 'param_names': [], 'weight_decay': group_weight_decay,
            'lr_scale': lr_scale, 'group_name': group_name})
        group['params'].append(param)
        group['param_names'].append(name)
    return list(groups.values())


def print_param_groups(groups):
    print('Param groups (name: tensors / params, weight_decay, lr_scale):')
    for group in groups:
        numel = sum(p.numel() for p in group['params'])
        print(f"  {group['group_name']}: {len(group['params'])} / {numel:,}, "
              f"wd={group['weight_decay']:g}, lr_scale={group['lr_scale']:.6g}")


def create_optimizer(args, model, get_num_layer=None, get_layer_scale=None, filter_bias_and_bn=True,
                     skip_list=None):
    """Build `args.opt` from timm's optimizer registry over per-group weight decay and lr scale.

    Reads args.opt, args.lr, args.weight_decay, args.opt_eps, args.opt_betas, args.momentum.
    `skip_list` defaults to `model.no_weight_decay()` when the model defines it.
    """
    if skip_list is None:
        skip_list = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else set()
    groups = param_groups(model, args.weight_decay, skip_list, get_num_layer, get_layer_scale,
                          filter_bias_and_bn)
    print_param_groups(groups)
    for group in groups:
        del group['param_names']

    extra = {}
    if args.opt_eps is not None:
        extra['eps'] = args.opt_eps
    if args.opt_betas is not None:
        extra['betas'] = tuple(args.opt_betas)
    # weight_decay=0 here: each group already carries its own value.
    return create_optimizer_v2(groups, opt=args.opt, lr=args.lr, weight_decay=0.0,
                               momentum=args.momentum, **extra)


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0, warmup_steps=-1):
    """Per-iteration values: linear warmup then half-cosine from base_value to final_value.

    The warmup is `warmup_steps` iterations when > 0, else `warmup_epochs * niter_per_ep`; it goes
    linearly from start_warmup_value to base_value (both included). The result has exactly
    `epochs * niter_per_ep` entries. (The release built the warmup only when warmup_epochs > 0,
    so warmup_steps alone produced a schedule of the wrong length.)
    """
    total_iters = epochs * niter_per_ep
    if total_iters <= 0:
        raise ValueError(
            f"The schedule would be empty (epochs={epochs}, iterations per epoch={niter_per_ep}). "
            "An epoch has 0 iterations when the training set is smaller than one total batch "
            "(batch_size x update_freq x GPUs): use a smaller batch or more data.")
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    if warmup_iters > total_iters:
        raise ValueError(
            f"Warmup ({warmup_iters} iterations) is longer than training ({total_iters} iterations): "
            "reduce --warmup_epochs / --warmup_steps.")
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    cosine_iters = total_iters - warmup_iters
    progress = np.arange(cosine_iters) / max(cosine_iters, 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * progress))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == total_iters
    return schedule


def step_scheduler(base_value, gamma, epochs, niter_per_ep, first_decayed_epoch=1):
    """Per-iteration values base_value * gamma ** max(0, epoch - first_decayed_epoch + 1): with the default, gamma **
    epoch. Corrformer's "type1" schedule as the UniRepLKNet release calls it (with epoch + 1 after each epoch) is
    gamma 0.5 from epoch 2: epochs 0 and 1 at base_value; AST's Speech Commands schedule is gamma 0.85 from epoch 5
    (0-based; its MultiStepLR milestones 5, 6, ... counted in finished epochs)."""
    if epochs * niter_per_ep <= 0:
        raise ValueError(f'The schedule would be empty (epochs={epochs}, iterations per epoch={niter_per_ep}).')
    epoch = np.arange(epochs * niter_per_ep) // niter_per_ep
    return base_value * gamma ** np.maximum(0, epoch - first_decayed_epoch + 1)
