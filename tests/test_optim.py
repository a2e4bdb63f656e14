"""optim_factory.py: layer-decay id maps on the real models, weight-decay groups, optimizers, schedules."""
import argparse
import functools

import numpy as np
import pytest
import timm
import torch
from timm.optim import Lookahead

import replknet  # noqa: F401  (registers replknet_*)
import unireplknet  # noqa: F401  (registers unireplknet_*)
from optim_factory import cosine_scheduler, create_optimizer, layer_decay_assigner, param_groups


@functools.lru_cache(maxsize=None)
def meta_model(name):
    """Full-size model without allocating memory: only names and shapes are needed (not modified by tests)."""
    with torch.device('meta'):
        return timm.create_model(name)


def optimizer_args(**overrides):
    values = dict(opt='adamw', lr=4e-3, weight_decay=0.05, opt_eps=1e-8, opt_betas=None, momentum=0.9)
    values.update(overrides)
    return argparse.Namespace(**values)


def assert_ids_follow_prefix_table(model, assigner, table, layer_decay):
    """Every parameter matches exactly one (prefix, id) row and gets scale layer_decay**(13 - id)."""
    for name, _ in model.named_parameters():
        matches = [layer_id for prefix, layer_id in table if name.startswith(prefix)]
        assert len(matches) == 1, name
        assert assigner.get_layer_id(name) == matches[0], name
        assert assigner.get_scale(matches[0]) == pytest.approx(layer_decay ** (13 - matches[0]))


# --- layer-wise decay (facts C.6 and C.12) --------------------------------------------------------

def test_unireplknet_s_layer_ids_match_the_release_map():
    table = ([('downsample_layers.0.', 0), ('stages.0.', 1), ('downsample_layers.1.', 2), ('stages.1.', 2),
              ('downsample_layers.2.', 3)]
             + [(f'stages.2.{block}.', 3 + block // 3) for block in range(27)]
             + [('downsample_layers.3.', 12), ('stages.3.', 12), ('norm.', 13), ('head.', 13)])
    assigner = layer_decay_assigner('unireplknet_s', 0.8)
    assert_ids_follow_prefix_table(meta_model('unireplknet_s'), assigner, table, 0.8)
    assert len(assigner.values) == 14 and assigner.values[13] == 1.0


def test_unireplknet_t_uses_ids_0_to_8_12_and_13():
    assigner = layer_decay_assigner('unireplknet_t', 0.7)
    used = {assigner.get_layer_id(name) for name, _ in meta_model('unireplknet_t').named_parameters()}
    assert used == {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13}


@pytest.mark.parametrize('model_name', ['replknet_31b', 'RepLKNet-31B'])
def test_replknet_31b_layer_ids_match_the_release_map(model_name):
    table = ([('stem.', 0), ('stages.0.', 1), ('transitions.0.', 1), ('stages.1.', 2), ('transitions.1.', 2)]
             + [(f'stages.2.blocks.{block}.', 3 + block // 4) for block in range(36)]
             + [('transitions.2.', 11), ('stages.3.', 12), ('norm.', 13), ('head.', 13)])
    assigner = layer_decay_assigner(model_name, 0.9)
    assert_ids_follow_prefix_table(meta_model('replknet_31b'), assigner, table, 0.9)


def test_layer_decay_off_and_unknown_family():
    assert layer_decay_assigner('unireplknet_s', 1.0) is None
    with pytest.raises(ValueError, match="there is none for model.*'resnet50'.*--layer_decay 1.0"):
        layer_decay_assigner('resnet50', 0.8)


# --- weight-decay groups (facts C.6) --------------------------------------------------------------

def group_sizes(groups):
    return {g['group_name']: (len(g['params']), sum(p.numel() for p in g['params'])) for g in groups}


def test_unireplknet_s_weight_decay_groups_match_the_release_counts():
    model = meta_model('unireplknet_s')
    # The release's rule alone (1-D, '.bias'; UniRepLKNet had no no_weight_decay()).
    release = param_groups(model, 0.05, skip_list=set())
    assert group_sizes(release) == {'decay': (333, 56_234_928), 'no_decay': (486, 221_776)}
    decay, no_decay = release
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.0
    # 4-D GRN gamma is decayed by that rule; 1-D layer scale, norms and biases are not.
    assert 'stages.2.0.act.1.gamma' in decay['param_names']
    assert {'stages.2.0.gamma', 'stages.2.0.pwconv1.1.bias', 'norm.weight'} <= set(no_decay['param_names'])


class PositionEmbedded(torch.nn.Module):
    """A 3-D parameter that the "1-D or bias" filter would decay, exempted by name (as ViT's pos_embed); the
    UniRepLKNet and RepLKNet models name none."""

    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = torch.nn.Linear(8, 8)

    def no_weight_decay(self):
        return {'pos_embed'}


def test_model_no_weight_decay_names_move_to_the_no_decay_group():
    model = PositionEmbedded()
    optimizer = create_optimizer(optimizer_args(weight_decay=0.05), model)  # main.py's call: no skip_list
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    assert decay_of[id(model.pos_embed)] == 0.0
    assert decay_of[id(model.proj.weight)] == 0.05 and decay_of[id(model.proj.bias)] == 0.0
    assert meta_model('unireplknet_s').no_weight_decay() == set() == meta_model('replknet_31b').no_weight_decay()


def test_groups_with_layer_decay_carry_scale_and_wd():
    model = meta_model('unireplknet_s')
    assigner = layer_decay_assigner('unireplknet_s', 0.8)
    groups = param_groups(model, 0.05, set(), assigner.get_layer_id, assigner.get_scale)
    by_name = {g['group_name']: g for g in groups}
    assert len(groups) == 28   # 14 ids x {decay, no_decay}
    assert by_name['layer_0_decay']['lr_scale'] == pytest.approx(0.8 ** 13)
    assert by_name['layer_13_no_decay']['lr_scale'] == 1.0
    assert by_name['layer_5_no_decay']['weight_decay'] == 0.0
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))


# --- optimizers from timm's registry --------------------------------------------------------------

def tiny_model():
    return timm.create_model('unireplknet_a', depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                             kernel_sizes=((3,), (7,), (7,), (3,)), num_classes=5)


@pytest.mark.parametrize('opt', ['adamw', 'lamb', 'sgd', 'lookahead_adamw'])
def test_optimizers_build_and_step(opt):
    model = tiny_model()
    assigner = layer_decay_assigner('unireplknet_a', 0.8)
    optimizer = create_optimizer(optimizer_args(opt=opt, opt_betas=[0.9, 0.99] if opt != 'sgd' else None),
                                 model, assigner.get_layer_id, assigner.get_scale)
    base = optimizer._base_optimizer if opt.startswith('lookahead') else optimizer
    assert isinstance(optimizer, Lookahead) == opt.startswith('lookahead')
    assert type(base).__name__.lower().startswith({'adamw': 'adamw', 'lamb': 'lamb', 'sgd': 'sgd',
                                                   'lookahead_adamw': 'adamw'}[opt])
    for group in base.param_groups:
        assert group['lr'] == 4e-3 and 'lr_scale' in group
        if opt == 'sgd':
            assert group['momentum'] == 0.9 and group['nesterov']
        else:
            assert group['betas'] == (0.9, 0.99) and group['eps'] == 1e-8
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_weight_decay_zero_still_gives_lr_scale():
    # The release only built groups when weight_decay > 0, so lr_scale was missing (KeyError in the loop).
    optimizer = create_optimizer(optimizer_args(weight_decay=0.0), tiny_model())
    assert all(group['lr_scale'] == 1.0 and group['weight_decay'] == 0.0 for group in optimizer.param_groups)


# --- cosine schedule (facts C.7) ------------------------------------------------------------------

def test_cosine_schedule_with_warmup_epochs():
    schedule = cosine_scheduler(4e-3, 1e-6, epochs=10, niter_per_ep=5, warmup_epochs=2)
    assert len(schedule) == 50
    np.testing.assert_allclose(schedule[:10], np.linspace(0, 4e-3, 10))
    assert schedule[10] == pytest.approx(4e-3)
    # Cosine part over L=40 iterations: final + (base-final)/2 * (1 + cos(pi*i/L)).
    assert schedule[30] == pytest.approx(1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + np.cos(np.pi * 20 / 40)))
    assert schedule[-1] == pytest.approx(1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + np.cos(np.pi * 39 / 40)))
    assert np.all(np.diff(schedule[10:]) < 0)


def test_warmup_steps_without_warmup_epochs_has_full_length():
    # The release asserted here (warmup built only when warmup_epochs > 0).
    schedule = cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=4, warmup_epochs=0, warmup_steps=5)
    assert len(schedule) == 12
    np.testing.assert_allclose(schedule[:5], [0, 0.25, 0.5, 0.75, 1.0])
    assert schedule[5] == 1.0


def test_warmup_steps_override_warmup_epochs_and_no_warmup_is_pure_cosine():
    assert np.count_nonzero(np.diff(cosine_scheduler(1.0, 0.0, 3, 4, warmup_epochs=2, warmup_steps=3)[:4]) > 0) == 2
    schedule = cosine_scheduler(0.05, 0.05, epochs=2, niter_per_ep=3)
    np.testing.assert_allclose(schedule, np.full(6, 0.05))


def test_schedule_errors_say_what_to_change():
    with pytest.raises(ValueError, match='smaller than one total batch'):
        cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=0)
    with pytest.raises(ValueError, match='--warmup_epochs'):
        cosine_scheduler(1.0, 0.0, epochs=1, niter_per_ep=4, warmup_epochs=2)


def test_layer_decay_is_refused_for_a_wrapper_that_declares_no_backbone_prefix(monkeypatch):
    """A data set whose model wraps the backbone must say where (its spec's backbone_prefix), or every backbone
    parameter would silently get the last layer id (no decay)."""
    import dataclasses
    import main
    import specs
    wrapper = torch.nn.Module()
    wrapper.trunk = torch.nn.Linear(2, 2)
    spec = dataclasses.replace(specs.get('MODELNET40'), backbone_prefix='')
    monkeypatch.setattr(specs, 'get', lambda name: spec)
    with pytest.raises(ValueError, match='declares no backbone_prefix.*--layer_decay 1.0'):
        main.backbone_parameter_prefix(argparse.Namespace(data_set='MODELNET40'), wrapper)
    spec = dataclasses.replace(spec, backbone_prefix='backbone.')  # declared, but naming no parameter of the model
    with pytest.raises(ValueError, match="found 'backbone.'"):
        main.backbone_parameter_prefix(argparse.Namespace(data_set='MODELNET40'), wrapper)
