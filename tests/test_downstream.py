"""segmentation/ and detection/ with the real frameworks (mmengine, mmseg 1.2.2, mmdet 3.3.0, mmcv-lite 2.1.0):
every shipped config loads with the frameworks' own `_base_` files and builds its backbone; the layer-decay
constructor in MMEngine; weights-only loading of MMEngine checkpoints; the re-parameterisation (float64).

The compiled mmcv ops that mmcv-lite lacks come from tests/mmcv_ext_standin.py. Training, testing and resuming
through MMEngine's Runner are in tests/test_downstream_runs.py (slow).
"""
import functools
import glob
import os
import pickle
import subprocess

import checkpoint
import mmcv_ext_standin
import numpy
import pytest
import torch

mmcv_ext_standin.install()

import mmengine.config.config  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402

import replk_mm.register_mmdet  # noqa: E402,F401  (what the detection configs' custom_imports run)
import replk_mm.register_mmseg  # noqa: E402,F401
from replk_mm import backbones, checkpoints, layer_decay, reparameterize  # noqa: E402

pytestmark = [pytest.mark.usefixtures('single_thread'),  # see tests/conftest.py
              pytest.mark.filterwarnings('ignore:pkg_resources is deprecated')]  # mmengine 0.10.7's import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_UNIREPLKNET = dict(type='UniRepLKNetBackbone', depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                        kernel_sizes=((3,), (13,), (13, 3), (13,)), init_cfg=None)
TINY_REPLKNET = dict(type='RepLKNet', large_kernel_sizes=(31, 29, 27, 13), layers=(1, 1, 1, 1),
                     channels=(8, 16, 24, 32), drop_path_rate=0., small_kernel=5)
DEPLOY_FLAGS = dict(UniRepLKNetBackbone=dict(deploy=True), RepLKNet=dict(small_kernel_merged=True))


def build_backbone(cfg):
    from mmseg.registry import MODELS
    return MODELS.build(cfg)


# ---- backbones in the real registries ---------------------------------------------------------------------------

@pytest.mark.parametrize('cfg', [TINY_UNIREPLKNET, TINY_REPLKNET], ids=['UniRepLKNet', 'RepLKNet'])
def test_both_frameworks_build_the_backbones_with_four_features(cfg):
    from mmdet.registry import MODELS as MMDET_MODELS
    assert type(MMDET_MODELS.build(cfg)) is type(build_backbone(cfg))
    model = build_backbone(cfg).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 32))
    widths = cfg.get('dims') or cfg['channels']
    assert [tuple(f.shape) for f in features] == [(1, c, 32 // s, 32 // s) for c, s in zip(widths, (4, 8, 16, 32))]
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())  # the segmentor runs distributed


def test_replknet_backbone_loads_an_imagenet_checkpoint_non_strictly(tmp_path):
    import replknet
    classifier = replknet.RepLKNet(**{k: v for k, v in TINY_REPLKNET.items() if k != 'type'}, num_classes=5)
    path = tmp_path / 'imagenet.pth'
    torch.save({'model': classifier.state_dict()}, path)
    model = build_backbone(dict(TINY_REPLKNET, pretrained=str(path)))
    assert torch.equal(model.stem[0].conv.weight, classifier.stem[0].conv.weight)


# ---- layer-wise learning-rate decay ---------------------------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('backbone.downsample_layers.0.0.weight', 0),
    ('backbone.stages.0.1.dwconv.lk_origin.weight', 1),
    ('backbone.downsample_layers.1.1.weight', 2),
    ('backbone.stages.1.0.gamma', 2),
    ('backbone.downsample_layers.2.0.weight', 3),
    ('backbone.stages.2.0.pwconv1.weight', 3),
    ('backbone.stages.2.26.pwconv1.weight', 11),
    ('backbone.downsample_layers.3.1.weight', 12),
    ('backbone.stages.3.2.norm.weight', 12),
    ('backbone.norm3.weight', 13),
    ('decode_head.conv_seg.weight', 13),
])
def test_layer_wise_ids(name, expected):
    assert layer_decay.layer_id(name, num_layers=12) == expected


@pytest.mark.parametrize('name, expected', [
    ('backbone.downsample_layers.3.0.weight', 0), ('backbone.stages.0.0.gamma', 1), ('backbone.stages.3.2.gamma', 4),
    ('neck.lateral_convs.0.conv.weight', 13),
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


def test_mmengine_builds_the_layer_decay_optimizer():
    model = torch.nn.Module()
    model.backbone = build_backbone(TINY_UNIREPLKNET)
    model.decode_head = torch.nn.Conv2d(32, 3, 1)
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='UniRepLKNetLearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=6, decay_rate=0.5)))
    groups = wrapper.optimizer.param_groups
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    # depths (1, 1, 2, 1): layer ids 0-3 (stem to stage 2), 6 (stage 3), 7 (head); lr scale 0.5 ** (7 - id)
    assert sorted({g['lr'] for g in groups}) == pytest.approx(sorted(1e-3 * 0.5 ** (7 - i) for i in (0, 1, 2, 3, 6, 7)))
    head_group = next(g for g in groups if g['params'][0] is model.decode_head.weight)
    assert head_group['lr'] == pytest.approx(1e-3) and head_group['weight_decay'] == 0.05


# ---- configs, through MMEngine with the frameworks' own bases -----------------------------------------------------

SEGMENTATION_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'segmentation', 'configs', '*', '*.py')))
DETECTION_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'detection', 'configs', '*', '*.py')))
SHIPPED_CONFIGS = [p for p in SEGMENTATION_CONFIGS + DETECTION_CONFIGS if os.sep + '_base_' + os.sep not in p]


@pytest.fixture(scope='module', autouse=True)
def framework_bases_without_metafile_search():
    """MMEngine looks every `mmseg::` / `mmdet::` base up in all ~200 metafiles of the package (about 1 s each)
    before it falls back to `.mim/configs/<path>`; `_base_/` files are never in a metafile, so skipping that search
    resolves the same files."""
    search = mmengine.config.config._get_external_cfg_path

    def skip_for_base_files(package_path, cfg_file):
        if cfg_file.startswith('_base_/'):
            raise ValueError(f'{cfg_file} is a base file')
        return search(package_path, cfg_file)

    mmengine.config.config._get_external_cfg_path = skip_for_base_files
    yield
    mmengine.config.config._get_external_cfg_path = search


@functools.lru_cache(maxsize=None)
def load_config(path):
    return Config.fromfile(path)


def test_every_family_has_configs_and_deploy_twins():
    names = [os.path.basename(p)[:-len('.py')] for p in SHIPPED_CONFIGS]
    for name in names:
        assert name.endswith('_deploy') or f'{name}_deploy' in names, f'{name} has no _deploy twin'
    for size in 'ntsblx':
        assert any(n.startswith(f'upernet_unireplknet_{size}') for n in names), size
    for size in 'tsblx':
        assert any(n.startswith(f'casc_mask_rcnn_unireplknet_{size}') for n in names), size
    for arch in ('31B', '31L', 'XL'):
        assert any(n.startswith(f'RepLKNet-{arch}') and 'upernet' in n for n in names), arch
        assert any(n.startswith(f'RepLKNet-{arch}') and 'cascade' in n for n in names), arch
    assert any('cityscapes' in n for n in names)


# Values of these keys do not change the structure, so configs that differ only here share one meta-device build.
CANONICAL_VALUES = dict(drop_path_rate=0., with_cp=False, use_checkpoint=False, init_cfg=None, pretrained=None)


@functools.lru_cache(maxsize=None)
def _feature_widths_of_meta_backbone(structure_repr):
    with torch.device('meta'):
        model = build_backbone(dict(eval(structure_repr)))
    return [info['num_chs'] for info in model.feature_info]


def feature_widths_of_meta_backbone(backbone_cfg):
    structure = {k: CANONICAL_VALUES.get(k, v) for k, v in backbone_cfg.items()}
    return _feature_widths_of_meta_backbone(repr(sorted(structure.items())))


# One config of each kind in the fast tier (about 0.5 s each, mostly MMEngine resolving bases), the rest slow.
FAST_CONFIGS = ('upernet_unireplknet_t_512_160k_ade20k', 'upernet_unireplknet_t_512_160k_ade20k_deploy',
                'RepLKNet-XL_MegData73Mpretrain_upernet_160k_ade20k_640',
                'casc_mask_rcnn_unireplknet_t_in1k_fpn_3x_coco',
                'RepLKNet-31B_1Kpretrain_cascade_mask_rcnn_3x_coco_deploy')


@pytest.mark.parametrize('path', [
    pytest.param(p, id=os.path.basename(p), marks=() if os.path.basename(p)[:-3] in FAST_CONFIGS else pytest.mark.slow)
    for p in SHIPPED_CONFIGS])
def test_config_loads_with_framework_bases_and_matches_its_backbone(path):
    cfg = load_config(path)
    backbone_cfg = cfg.model.backbone.to_dict()
    framework = 'mmseg' if 'segmentation' in path else 'mmdet'
    assert cfg.custom_imports.imports == [f'replk_mm.register_{framework}'] and cfg.default_scope == framework
    source = cfg.paper_result.source
    assert source.startswith(('UniRepLKNet paper', 'RepLKNet paper')) and 'Table' in source
    assert cfg.paper_result.value is None or 40 < cfg.paper_result.value < 90
    widths = list(backbone_cfg['dims'] if backbone_cfg['type'] == 'UniRepLKNetBackbone' else backbone_cfg['channels'])
    assert feature_widths_of_meta_backbone(backbone_cfg) == widths
    if framework == 'mmseg':
        assert cfg.model.decode_head.in_channels == widths and cfg.model.auxiliary_head.in_channels == widths[2]
        assert cfg.model.data_preprocessor.size == cfg.crop_size
        assert cfg.train_dataloader.batch_size == 2 and cfg.model.backbone.get('pretrained') is None
    else:
        assert cfg.model.neck.in_channels == widths
        assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_epochs == 36
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    if 'constructor' in cfg.optim_wrapper:  # the deepest stage-2 block gets a layer id below the last stage's
        num_layers = cfg.optim_wrapper.paramwise_cfg.num_layers
        assert layer_decay.layer_id(f'backbone.stages.2.{backbone_cfg["depths"][2] - 1}.gamma', num_layers) < num_layers
    if path.endswith('_deploy.py'):
        trained = load_config(path.replace('_deploy.py', '.py')).model.backbone.to_dict()
        for key, value in DEPLOY_FLAGS[backbone_cfg['type']].items():
            assert backbone_cfg.pop(key) == value and trained.pop(key, False) != value
        assert {k: v for k, v in backbone_cfg.items() if k not in CANONICAL_VALUES} == \
               {k: v for k, v in trained.items() if k not in CANONICAL_VALUES}


# ---- weights-only loading of MMEngine checkpoints ----------------------------------------------------------------

def mmengine_style_checkpoint(state_dict, cfg_text=''):
    """What MMEngine's Runner saves: a MessageHub with HistoryBuffers (numpy inside) besides the weights."""
    loss = HistoryBuffer()
    loss.update(0.5)
    return dict(meta=dict(cfg=cfg_text, iter=2), state_dict=state_dict,
                message_hub=dict(log_scalars={'train/loss': loss}, runtime_info={}, resumed_keys={}))


class _AttributeLookup:
    """Pickles as getattr(owner, name): what a hostile file would use the allowed getattr stand-in for."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


def test_mmengine_checkpoints_load_weights_only_with_the_allow_list_and_nothing_more(tmp_path):
    path = tmp_path / 'iter_2.pth'
    torch.save(mmengine_style_checkpoint({'w': torch.ones(2)}), path)
    registered = torch.serialization.get_safe_globals()  # replk_mm.register_mm* added the allow-list
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(path)  # torch >= 2.6 without the allow-list: mmengine issue 1655
        loaded = checkpoints.load_checkpoint(path)
    finally:
        torch.serialization.add_safe_globals(registered)
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 0.5
    assert torch.equal(torch.load(path)['state_dict']['w'], torch.ones(2))  # what MMEngine's loaders call

    hostile = tmp_path / 'hostile.pth'
    for owner in (subprocess.Popen, HistoryBuffer, numpy.ndarray):  # a class outside the list; attributes of
        torch.save({'x': _AttributeLookup(owner, '__init__')}, hostile)  # allowed ones other than the statistics
        with pytest.raises(checkpoint.CheckpointError, match='unsafe_load_checkpoint') as refused:
            checkpoints.load_checkpoint(hostile)
        assert not isinstance(refused.value, checkpoint.UnreadableCheckpointError)  # refused, not called corrupt
        assert 'allows only the statistic methods' in str(refused.value.__cause__) or owner is subprocess.Popen
    assert checkpoints.load_checkpoint(hostile, unsafe=True)['x'] is numpy.ndarray.__init__


# ---- re-parameterisation -------------------------------------------------------------------------------------------

def randomized_batchnorms(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.normal_(1, 0.5, generator=generator)
                module.bias.normal_(0, 0.5, generator=generator)
    return model


@pytest.mark.parametrize('cfg, checkpointing', [(TINY_UNIREPLKNET, 'with_cp'), (TINY_REPLKNET, 'use_checkpoint')],
                         ids=['UniRepLKNet', 'RepLKNet'])
def test_reparameterize_script_writes_what_the_deploy_backbone_loads_float64(tmp_path, cfg, checkpointing):
    trained = randomized_batchnorms(build_backbone(cfg)).double().eval()
    state_dict = {f'backbone.{k}': v for k, v in trained.state_dict().items()}
    state_dict['decode_head.conv_seg.weight'] = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    cfg_text = Config(dict(model=dict(type='EncoderDecoder', backbone=dict(cfg, **{checkpointing: True})))).pretty_text
    torch.save(mmengine_style_checkpoint(state_dict, cfg_text), tmp_path / 'iter_2.pth')

    reparameterize.main([str(tmp_path / 'iter_2.pth'), str(tmp_path / 'deploy.pth'),
                         '--cfg-options', f'model.backbone.{checkpointing}=False'])
    converted = torch.load(tmp_path / 'deploy.pth', weights_only=True)  # no MMEngine objects left
    assert converted['meta'] == {'iter': 2}
    head = 'decode_head.conv_seg.weight'
    assert torch.equal(converted['state_dict'][head], state_dict[head])
    deploy = build_backbone(dict(cfg, **DEPLOY_FLAGS[cfg['type']])).double().eval()
    deploy.load_state_dict({k[len('backbone.'):]: v for k, v in converted['state_dict'].items()
                            if k.startswith('backbone.')})
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for expected, got in zip(trained(x), deploy(x)):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_reparameterize_reads_a_shipped_config_file(tmp_path):
    trained = randomized_batchnorms(build_backbone(TINY_UNIREPLKNET)).eval()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in trained.state_dict().items()}}, tmp_path / 'plain.pth')
    config = os.path.join(REPO, 'segmentation', 'configs', 'unireplknet', 'upernet_unireplknet_t_512_160k_ade20k.py')
    tiny = [f'model.backbone.{key}={value!r}'.replace(' ', '') for key, value in TINY_UNIREPLKNET.items()
            if key in ('depths', 'dims', 'kernel_sizes')]
    reparameterize.main([str(tmp_path / 'plain.pth'), str(tmp_path / 'deploy.pth'), '--config', config,
                         '--cfg-options', *tiny])
    deploy = build_backbone(dict(TINY_UNIREPLKNET, deploy=True)).eval()
    converted = torch.load(tmp_path / 'deploy.pth')['state_dict']
    deploy.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x)[-1], trained(x)[-1], rtol=1e-4, atol=1e-5)


def test_reparameterize_needs_a_config_when_the_checkpoint_has_none(tmp_path):
    torch.save({'state_dict': {'backbone.w': torch.ones(1)}}, tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match='--config'):
        reparameterize.main([str(tmp_path / 'plain.pth'), str(tmp_path / 'out.pth')])
    with pytest.raises(ValueError, match='no .backbone'):
        reparameterize.reparameterize_backbone_state(TINY_REPLKNET, {'decode_head.w': torch.ones(1)})
