"""segmentation/ and detection/: backbone wrappers, registration, layer-wise LR decay, configs and reparameterisation.

MMSegmentation / MMDetection / MMCV are not installed here: registration is checked against stand-in registries
and stand-in `mmseg`/`mmdet`/`mmcv.runner` modules; configs are executed with runpy and their own `_base_` files
merged the way MMCV does (bases that MMSeg/MMDet ship themselves are only checked by name).
"""
import functools
import importlib
import os
import runpy
import sys
import types

import pytest
import torch

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENTATION = os.path.join(REPO, 'segmentation')
DETECTION = os.path.join(REPO, 'detection')
sys.path[:0] = [p for p in (SEGMENTATION, DETECTION) if p not in sys.path]

from mmcv_custom import backbones, layer_decay_optimizer_constructor as layer_decay  # noqa: E402
from mmcv_custom.reparameterize import reparameterize_backbone_state  # noqa: E402

TINY_UNIREPLKNET = dict(type='UniRepLKNetBackbone', depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                        kernel_sizes=((3,), (13,), (13, 3), (13,)), init_cfg=dict(type='Pretrained', checkpoint=None))
TINY_REPLKNET = dict(type='RepLKNet', large_kernel_sizes=(31, 29, 27, 13), layers=(1, 1, 1, 1),
                     channels=(8, 16, 24, 32), drop_path_rate=0., small_kernel=5)

# Base files that MMSegmentation 0.x / MMDetection 2.x ship in their own configs/_base_ folder.
FRAMEWORK_BASES = {
    SEGMENTATION: {'_base_/default_runtime.py', '_base_/datasets/ade20k.py', '_base_/datasets/ade20k_640x640.py',
                   '_base_/datasets/cityscapes_769x769.py'},
    DETECTION: {'_base_/default_runtime.py', '_base_/datasets/coco_instance.py',
                '_base_/models/cascade_mask_rcnn_r50_fpn.py'},
}



class FakeRegistry:
    """The part of an MMCV/MMEngine registry that registration and building use."""

    def __init__(self):
        self.module_dict = {}

    def __contains__(self, name):
        return name in self.module_dict

    def register_module(self, name=None, module=None, force=False):
        self.module_dict[name or module.__name__] = module
        return module

    def build(self, cfg):
        cfg = dict(cfg)
        return self.module_dict[cfg.pop('type')](**cfg)


def built_backbone(cfg):
    registry = FakeRegistry()
    backbones.register_backbones(registry)
    return registry.build(cfg)


# ---- backbone wrappers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cfg', [TINY_UNIREPLKNET, TINY_REPLKNET], ids=['UniRepLKNet', 'RepLKNet'])
def test_wrapper_builds_from_registry_and_returns_four_features(cfg):
    model = built_backbone(cfg).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 32))
    widths = cfg.get('dims') or cfg['channels']
    assert [tuple(f.shape) for f in features] == [(1, c, 32 // s, 32 // s) for c, s in zip(widths, (4, 8, 16, 32))]


def test_wrappers_default_to_sync_bn_and_no_large_kernel_implementation():
    unireplknet_model = built_backbone(TINY_UNIREPLKNET)
    replknet_model = built_backbone(TINY_REPLKNET)
    for model in (unireplknet_model, replknet_model):
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert all(type(m).__name__ != 'DepthWiseConv2dImplicitGEMM' for m in unireplknet_model.modules())


def test_replknet_wrapper_loads_an_imagenet_checkpoint_non_strictly(tmp_path):
    import replknet
    classifier = replknet.RepLKNet(**{k: v for k, v in TINY_REPLKNET.items() if k != 'type'}, num_classes=5)
    path = tmp_path / 'imagenet.pth'
    torch.save({'model': classifier.state_dict()}, path)
    model = built_backbone(dict(TINY_REPLKNET, pretrained=str(path)))
    assert torch.equal(model.stem[0].conv.weight, classifier.stem[0].conv.weight)


@pytest.mark.parametrize('framework, package, registry_module', [
    ('mmseg', 'mmseg_custom', 'mmseg.models.builder'),
    ('mmdet', 'mmdet_custom', 'mmdet.models.builder'),
])
def test_custom_package_registers_into_the_framework_registry(monkeypatch, framework, package, registry_module):
    registry = FakeRegistry()
    for name in (framework, f'{framework}.models'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, registry_module, types.SimpleNamespace(BACKBONES=registry))
    monkeypatch.delitem(sys.modules, package, raising=False)
    importlib.import_module(package)
    assert {'UniRepLKNetBackbone', 'RepLKNet'} <= set(registry.module_dict)


# ---- layer-wise learning-rate decay (facts D.3) -------------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('backbone.downsample_layers.0.0.weight', 0),
    ('backbone.downsample_layers.1.0.weight', 2),
    ('backbone.downsample_layers.2.1.bias', 3),
    ('backbone.downsample_layers.3.0.weight', 12),
    ('backbone.stages.0.1.dwconv.weight', 1),
    ('backbone.stages.1.2.gamma', 2),
    ('backbone.stages.2.0.pwconv1.1.weight', 3),
    ('backbone.stages.2.26.pwconv1.1.weight', 11),
    ('backbone.stages.3.2.se.up.weight', 12),
    ('backbone.norm3.weight', 13),
    ('decode_head.conv_seg.weight', 13),
    ('neck.lateral_convs.0.conv.weight', 13),
])
def test_layer_wise_ids(name, expected):
    assert layer_decay.layer_id(name, num_layers=12) == expected


@pytest.mark.parametrize('name, expected', [
    ('backbone.downsample_layers.3.0.weight', 0),
    ('backbone.stages.0.1.dwconv.weight', 1),
    ('backbone.stages.3.0.gamma', 4),
    ('decode_head.conv_seg.weight', 13),
])
def test_stage_wise_ids(name, expected):
    assert layer_decay.layer_id(name, num_layers=12, decay_type='stage_wise') == expected


def test_param_groups_scale_lr_and_exempt_norms_and_biases():
    params = {
        'backbone.downsample_layers.0.0.weight': torch.nn.Parameter(torch.zeros(4, 3, 3, 3)),
        'backbone.stages.2.4.dwconv.lk_origin.weight': torch.nn.Parameter(torch.zeros(4, 1, 13, 13)),
        'backbone.stages.2.4.act.1.gamma': torch.nn.Parameter(torch.zeros(1, 1, 1, 4)),
        'backbone.stages.2.4.norm.weight': torch.nn.Parameter(torch.zeros(4)),
        'decode_head.conv_seg.bias': torch.nn.Parameter(torch.zeros(4)),
    }
    groups = layer_decay.param_groups(params.items(), base_lr=1e-4, base_wd=0.05,
                                      paramwise_cfg=dict(num_layers=12, decay_rate=0.9, dw_scale=2.0))
    by_name = {g['group_name']: g for g in groups}
    assert by_name['layer_0_decay']['lr'] == pytest.approx(1e-4 * 0.9 ** 13)
    assert by_name['layer_4_decay_dwconv']['lr_scale'] == pytest.approx(0.9 ** 9 * 2.0)
    assert by_name['layer_4_decay']['param_names'] == ['backbone.stages.2.4.act.1.gamma']  # 4-D: decayed
    assert by_name['layer_4_no_decay']['weight_decay'] == 0.
    assert by_name['layer_13_no_decay']['lr'] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match='num_layers'):
        layer_decay.param_groups(params.items(), 1e-4, 0.05, dict(decay_rate=0.9))


def test_constructor_registers_with_mmcv_and_builds_the_groups(monkeypatch):
    class DefaultOptimizerConstructor:
        def __init__(self, optimizer_cfg, paramwise_cfg=None):
            self.base_lr, self.base_wd = optimizer_cfg['lr'], optimizer_cfg['weight_decay']
            self.paramwise_cfg = paramwise_cfg or {}

    registry = FakeRegistry()
    monkeypatch.setitem(sys.modules, 'mmcv', types.ModuleType('mmcv'))
    monkeypatch.setitem(sys.modules, 'mmcv.runner', types.SimpleNamespace(
        OPTIMIZER_BUILDERS=registry, DefaultOptimizerConstructor=DefaultOptimizerConstructor))
    module = importlib.reload(layer_decay)
    try:
        constructor = registry.module_dict['UniRepLKNetLearningRateDecayOptimizerConstructor'](
            dict(lr=1e-3, weight_decay=0.05), dict(num_layers=12, decay_rate=0.5))
        model = torch.nn.Module()
        model.backbone = built_backbone(TINY_UNIREPLKNET)
        params = []
        constructor.add_params(params, model)
        assert sum(len(g['params']) for g in params) == len(list(model.parameters()))
        assert min(g['lr'] for g in params) == pytest.approx(1e-3 * 0.5 ** 13)
    finally:
        monkeypatch.undo()
        importlib.reload(module)


# ---- configs ---------------------------------------------------------------------------------------------------------

def _merge(base, override):
    """MMCV's config inheritance: dicts merge recursively unless the override says _delete_=True."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict):
            value = dict(value)
            keep_base = not value.pop('_delete_', False) and isinstance(merged.get(key), dict)
            value = _merge(merged[key] if keep_base else {}, value)
        merged[key] = value
    return merged


def load_config(path, root):
    """A config file with the `_base_` files of this repository merged in (MMSeg/MMDet-provided ones are named)."""
    namespace = runpy.run_path(path)
    cfg = {k: v for k, v in namespace.items() if not k.startswith('__') and not isinstance(v, types.ModuleType)}
    bases = cfg.pop('_base_', [])
    merged = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if os.path.exists(base_path):
            merged = _merge(merged, load_config(base_path, root))
        else:
            relative = os.path.relpath(base_path, os.path.join(root, 'configs'))
            assert relative in FRAMEWORK_BASES[root], f'{path}: base {base} exists neither here nor in MMSeg/MMDet'
    return _merge(merged, cfg)


def config_files(root):
    folder = os.path.join(root, 'configs')
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if f.endswith('.py') and '_base_' not in d)


ALL_CONFIGS = [(SEGMENTATION, p) for p in config_files(SEGMENTATION)] + [(DETECTION, p) for p in config_files(DETECTION)]


def test_every_family_has_configs():
    names = [os.path.basename(p) for _, p in ALL_CONFIGS]
    for size in 'ntsblx':
        assert any(n.startswith(f'upernet_unireplknet_{size}') for n in names), size
        assert any(n.startswith(f'upernet_unireplknet_{size}') and n.endswith('_deploy.py') for n in names), size
    for size in 'tsblx':
        assert any(n.startswith(f'casc_mask_rcnn_unireplknet_{size}') for n in names), size
    for arch in ('31B', '31L', 'XL'):
        assert any(n.startswith(f'RepLKNet-{arch}') and 'upernet' in n for n in names), arch
        assert any(n.startswith(f'RepLKNet-{arch}') and 'cascade' in n for n in names), arch


# Values of these keys do not change the structure, so configs that differ only here share one meta-device build;
# the checkpoint is skipped, as when testing a trained model.
CANONICAL_VALUES = dict(drop_path_rate=0., with_cp=False, use_checkpoint=False,
                        init_cfg=dict(type='Pretrained', checkpoint=None), pretrained=None)


def feature_widths_of_meta_backbone(backbone_cfg):
    structure = {k: CANONICAL_VALUES.get(k, v) for k, v in backbone_cfg.items()}
    return _feature_widths_of_meta_backbone(repr(sorted(structure.items())))


@functools.lru_cache(maxsize=None)
def _feature_widths_of_meta_backbone(structure_repr):
    with torch.device('meta'):
        model = built_backbone(dict(eval(structure_repr)))
    return [info['num_chs'] for info in model.feature_info]


@pytest.mark.parametrize('root, path', ALL_CONFIGS, ids=[os.path.basename(p) for _, p in ALL_CONFIGS])
def test_config_builds_its_backbone_with_matching_head_widths(root, path):
    cfg = load_config(path, root)
    backbone_cfg = dict(cfg['model']['backbone'])
    assert cfg['custom_imports']['imports'][0] in ('mmseg_custom', 'mmdet_custom')
    widths = list(backbone_cfg['dims'] if backbone_cfg['type'] == 'UniRepLKNetBackbone' else backbone_cfg['channels'])
    assert feature_widths_of_meta_backbone(backbone_cfg) == widths
    if 'decode_head' in cfg['model']:
        assert cfg['model']['decode_head']['in_channels'] == widths
        assert cfg['model']['auxiliary_head']['in_channels'] == widths[2]
    else:
        assert cfg['model']['neck']['in_channels'] == widths
    if 'constructor' in cfg['optimizer']:
        stage2_blocks = (backbone_cfg['depths'])[2]
        assert layer_decay.layer_id(f'backbone.stages.2.{stage2_blocks - 1}.gamma',
                                    cfg['optimizer']['paramwise_cfg']['num_layers']) \
            < cfg['optimizer']['paramwise_cfg']['num_layers']


# ---- re-parameterisation -------------------------------------------------------------------------------------------

def _randomize_batchnorms(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.normal_(1, 0.5, generator=generator)
                module.bias.normal_(0, 0.5, generator=generator)
    return model


@pytest.mark.parametrize('cfg, deploy_kwargs', [
    (TINY_UNIREPLKNET, dict(deploy=True)),
    (TINY_REPLKNET, dict(small_kernel_merged=True)),
], ids=['UniRepLKNet', 'RepLKNet'])
def test_reparameterized_checkpoint_loads_into_the_deploy_backbone(cfg, deploy_kwargs):
    trained = _randomize_batchnorms(built_backbone(cfg)).eval()
    segmentor_state = {f'backbone.{k}': v for k, v in trained.state_dict().items()}
    segmentor_state['decode_head.conv_seg.weight'] = torch.ones(2, 4, 1, 1)
    converted = reparameterize_backbone_state(cfg, segmentor_state)
    assert torch.equal(converted['decode_head.conv_seg.weight'], segmentor_state['decode_head.conv_seg.weight'])

    deploy = built_backbone(dict(cfg, **deploy_kwargs)).eval()
    deploy.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items() if k.startswith('backbone.')})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for expected, got in zip(trained(x), deploy(x)):
            assert torch.allclose(expected, got, rtol=1e-4, atol=1e-5)


def test_reparameterize_script_writes_a_deploy_checkpoint(tmp_path, monkeypatch):
    from mmcv_custom import reparameterize
    seen_options = {}

    def fake_load_config(path, cfg_options):  # stands in for mmcv/mmengine Config.fromfile + merge_from_dict
        seen_options.update(cfg_options)
        backbone = types.SimpleNamespace(to_dict=lambda: dict(TINY_REPLKNET))
        return types.SimpleNamespace(model=types.SimpleNamespace(backbone=backbone))

    monkeypatch.setattr(reparameterize, '_load_config', fake_load_config)
    trained = _randomize_batchnorms(built_backbone(TINY_REPLKNET)).eval()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in trained.state_dict().items()}, 'meta': {}},
               tmp_path / 'trained.pth')
    reparameterize.main(['config.py', str(tmp_path / 'trained.pth'), str(tmp_path / 'deploy.pth'),
                         '--cfg-options', 'model.backbone.use_checkpoint=False', 'work_dir=out/run1'])
    assert seen_options == {'model.backbone.use_checkpoint': False, 'work_dir': 'out/run1'}
    state = torch.load(tmp_path / 'deploy.pth')['state_dict']
    deploy = built_backbone(dict(TINY_REPLKNET, small_kernel_merged=True))
    deploy.load_state_dict({k[len('backbone.'):]: v for k, v in state.items()})
