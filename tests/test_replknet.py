"""RepLKNet: compatibility with the original release (keys, shapes, counts), exact re-parameterisation,
checkpointing, SyncBN as a per-model choice, timm integration and error messages.

Full-size models are only built on the meta device (no memory, no compute); numerics use tiny widths with the
real kernel sizes and block types.
"""
import os
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._features import FeatureGetterNet
from timm.utils import reparameterize_model
from torch.nn.modules.batchnorm import _BatchNorm

import replknet
from replknet import RepLKNet

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py

# The original release's RepLKNet-31B state_dict keys and shapes (name, shape, dtype per line), training and merged.
REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'replknet_keys')

TINY_31B = dict(large_kernel_sizes=(31, 29, 27, 13), layers=(1, 1, 2, 1), channels=(8, 8, 16, 16), small_kernel=5)
TINY_XL = dict(large_kernel_sizes=(27, 27, 27, 13), layers=(1, 1, 2, 1), channels=(8, 8, 16, 16), small_kernel=None,
               dw_ratio=1.5)



def tiny(arch=TINY_31B, **kwargs):
    kwargs.setdefault('drop_path_rate', 0.)
    kwargs.setdefault('num_classes', 10)
    return RepLKNet(**arch, **kwargs)


def randomize_batchnorms(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so that merging them is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(shape, generator=generator) * 0.5 + 1)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.5)
    return model


def relative_error(reference, other):
    return ((reference - other).abs().max() / reference.abs().max()).item()


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def key_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def reference_key_shapes(name):
    rows = []
    with open(os.path.join(REFERENCE_DIR, name)) as f:
        for line in f.read().splitlines():
            key, shape = line.split('\t')[:2]
            rows.append((key, tuple(int(d) for d in shape.strip('()').split(',') if d.strip())))
    return rows


# ---- compatibility with the original release ----------------------------------------------------------------------

def test_31b_keys_and_shapes_equal_the_original_in_training_and_merged_form():
    with torch.device('meta'):
        assert key_shapes(replknet.create_RepLKNet31B()) == reference_key_shapes('replknet_31b_train.txt')
        assert key_shapes(replknet.create_RepLKNet31B(small_kernel_merged=True)) == \
            reference_key_shapes('replknet_31b_reparam.txt')


@pytest.mark.parametrize('factory, train_params, merged_params, train_keys', [
    (replknet.create_RepLKNet31B, 79_864_168, 79_527_272, 1171),
    (replknet.create_RepLKNet31L, 172_671_016, 172_165_672, 1171),
    (replknet.create_RepLKNetXL, 335_435_752, 335_399_656, 1027),
])
def test_parameter_and_key_counts_equal_the_original(factory, train_params, merged_params, train_keys):
    with torch.device('meta'):
        model, merged = factory(), factory(small_kernel_merged=True)
    assert param_count(model) == train_params
    assert param_count(merged) == merged_params
    assert len(model.state_dict()) == train_keys
    assert len(merged.state_dict()) == 931


def test_backbone_counts_equal_the_original():
    with torch.device('meta'):
        backbone = replknet.create_RepLKNet31B(num_classes=None, out_indices=(0, 1, 2, 3))
        xl_backbone = replknet.create_RepLKNetXL(num_classes=None, out_indices=(0, 1, 2, 3),
                                                 norm_intermediate_features=True)
    assert param_count(backbone) == 78_837_120
    assert len(backbone.state_dict()) == 1164
    assert param_count(xl_backbone) == 333_390_336
    assert any(k.startswith('stages.3.norm.') for k in xl_backbone.state_dict())


def test_original_factory_defaults():
    with torch.device('meta'):
        model = replknet.create_RepLKNet31B()
    assert model.grad_checkpointing and model.num_classes == 1000
    assert model.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


# ---- exact re-parameterisation ------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', [TINY_31B, TINY_XL], ids=['31B-like', 'XL-like'])
@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_structural_reparam_is_exact(arch, dtype, tolerance):
    model = randomize_batchnorms(tiny(arch)).to(dtype).eval()
    x = torch.randn(1, 3, 64, 64, dtype=dtype)  # stage-1 map 16x16: every tap of the 31x31 kernel is used
    with torch.no_grad():
        expected = model(x)
        model.structural_reparam()
        merged = model(x)
    assert relative_error(expected, merged) <= tolerance
    assert not any('lkb_origin' in k or 'small_conv' in k for k in model.state_dict())


@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_deep_fuse_bn_is_exact_and_handles_sync_batchnorm(dtype, tolerance):
    model = randomize_batchnorms(tiny(use_sync_bn=True)).to(dtype).eval()
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
        model.structural_reparam()
        model.deep_fuse_BN()
        fused = model(x)
    assert relative_error(expected, fused) <= tolerance
    conv_bns = [m for m in model.modules() if isinstance(m, replknet.ConvBN)]
    assert conv_bns and all(isinstance(m.bn, nn.Identity) for m in conv_bns)


def test_merged_model_loads_reparameterised_state_dict_with_identical_output():
    model = randomize_batchnorms(tiny()).eval()
    merged = reparameterize_model(model)  # timm utility: calls reparameterize() on every large-kernel conv
    deploy = tiny(small_kernel_merged=True).eval()
    deploy.load_state_dict(merged.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(merged(x), deploy(x))
        assert relative_error(model(x), deploy(x)) <= 1e-5


def test_reparam_with_large_kernel_implementation_keeps_padding(tmp_path, monkeypatch):
    """Original issue #48: with LARGE_KERNEL_CONV_IMPL set, merging built a conv with the wrong padding.

    A stand-in for the CUDA-only iGEMM module (same constructor, no padding attribute) checks the fix on CPU.
    """
    package = tmp_path / 'depthwise_conv2d_implicit_gemm'
    package.mkdir()
    (package / '__init__.py').write_text(textwrap.dedent('''
        import torch, torch.nn as nn, torch.nn.functional as F
        class DepthWiseConv2dImplicitGEMM(nn.Module):
            def __init__(self, channels, kernel, bias=False):
                super().__init__()
                self.weight = nn.Parameter(torch.randn(channels, 1, kernel, kernel) * 0.01)
                self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
            def forward(self, x):
                return F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2, groups=x.shape[1])
    '''))
    monkeypatch.setattr(sys, 'path', list(sys.path))  # get_conv2d appends the folder to sys.path
    monkeypatch.setenv(replknet.LARGE_KERNEL_IMPL_ENV, str(tmp_path))
    monkeypatch.delitem(sys.modules, 'depthwise_conv2d_implicit_gemm', raising=False)
    replknet._implicit_gemm_conv_class.cache_clear()
    try:
        model = randomize_batchnorms(tiny()).eval()
        large_conv = model.stages[0].blocks[0].large_kernel
        assert type(large_conv.lkb_origin.conv).__name__ == 'DepthWiseConv2dImplicitGEMM'
        assert isinstance(large_conv.small_conv.conv, nn.Conv2d)  # 5x5 stays nn.Conv2d
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
            model.structural_reparam()
            assert type(large_conv.lkb_reparam).__name__ == 'DepthWiseConv2dImplicitGEMM'
            assert relative_error(expected, model(x)) <= 1e-5
    finally:
        replknet._implicit_gemm_conv_class.cache_clear()


def test_unbuildable_large_kernel_implementation_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'path', list(sys.path))
    monkeypatch.setenv(replknet.LARGE_KERNEL_IMPL_ENV, str(tmp_path / 'missing'))
    monkeypatch.delitem(sys.modules, 'depthwise_conv2d_implicit_gemm', raising=False)
    replknet._implicit_gemm_conv_class.cache_clear()
    try:
        with pytest.raises(ImportError, match='unset LARGE_KERNEL_CONV_IMPL'):
            tiny()
    finally:
        replknet._implicit_gemm_conv_class.cache_clear()


# ---- training behaviour ---------------------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_identical_gradients_and_bn_statistics():
    plain = randomize_batchnorms(tiny(drop_path_rate=0.2)).train()
    checkpointed = tiny(drop_path_rate=0.2, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same drop-path draws
        model(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), f'{name} (BN running stats updated twice?)'


def test_sync_batchnorm_is_a_per_model_choice_and_runs_in_one_process():
    synced = tiny(use_sync_bn=True).train()
    plain_after = tiny()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain_after.modules())
    synced(torch.randn(2, 3, 32, 32)).sum().backward()
    assert synced.head.weight.grad is not None


# ---- backbone mode and timm API ------------------------------------------------------------------------------------

def test_backbone_mode_returns_stage_features():
    model = tiny(num_classes=None, out_indices=(0, 1, 2, 3), norm_intermediate_features=True).eval()
    features = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in features] == [(1, 8, 8, 8), (1, 8, 4, 4), (1, 16, 2, 2), (1, 16, 1, 1)]
    assert not hasattr(model, 'head')
    partial = tiny(num_classes=None, out_indices=(1, 3)).eval()
    assert [f.shape[1] for f in partial(torch.randn(1, 3, 32, 32))] == [8, 16]


def test_timm_feature_getter_matches_backbone_mode():
    classifier = tiny().eval()
    backbone = tiny(num_classes=None, out_indices=(0, 1, 2, 3)).eval()
    backbone.load_state_dict(classifier.state_dict(), strict=False)
    getter = FeatureGetterNet(classifier, out_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(getter(x), backbone(x)):
            assert torch.equal(a, b)
    assert getter.feature_info.reduction() == [4, 8, 16, 32]


def test_timm_head_api():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 16, 1, 1)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, 16)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.set_grad_checkpointing(True)
    assert all(stage.use_checkpoint for stage in model.stages)
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) == 1 + 2 * sum(TINY_31B['layers']) + 1  # stem, blocks (transitions join one), head
    assert any(name.startswith('transitions.0') for name in groups[2])


def test_timm_registry_and_kwargs():
    assert {'replknet_31b', 'replknet_31l', 'replknet_xl'} <= set(timm.list_models('replknet*'))
    with torch.device('meta'):
        model = timm.create_model('replknet_xl', num_classes=7, drop_path_rate=0.1, with_cp=True, use_sync_bn=True,
                                  in_chans=1)
        merged = timm.create_model('replknet_31b', small_kernel_merged=True)
        features = timm.create_model('replknet_31l', features_only=True)
        backbone = timm.create_model('replknet_31b', out_indices=(0, 1, 2, 3))
    assert model.head.out_features == 7 and model.stem[0].conv.in_channels == 1
    assert model.grad_checkpointing and any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert model.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)
    assert param_count(merged) == 79_527_272
    assert features.feature_info.channels() == [192, 384, 768, 1536]
    assert param_count(backbone) == 78_837_120


def test_aliases_resolve_to_timm_names():
    assert replknet.REPLKNET_ALIASES == {'RepLKNet-31B': 'replknet_31b', 'RepLKNet-31L': 'replknet_31l',
                                         'RepLKNet-XL': 'replknet_xl'}
    for alias, name in replknet.REPLKNET_ALIASES.items():
        assert replknet.resolve_replknet_name(alias) == name == replknet.resolve_replknet_name(name)
    with pytest.raises(ValueError, match='RepLKNet-31B.*replknet_xl'):
        replknet.resolve_replknet_name('RepLKNet-31X')


# ---- bad input --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=None), 'exactly one of num_classes'),
    (dict(num_classes=10, out_indices=(0,)), 'exactly one of num_classes'),
    (dict(num_classes=None, out_indices=()), 'non-empty'),
    (dict(num_classes=None, out_indices=(4,)), 'stage indices in 0..3'),
    (dict(norm_intermediate_features=True), 'also pass out_indices'),
])
def test_invalid_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_loading_another_variant_or_form_says_what_differs():
    model = tiny()
    wider = RepLKNet(**dict(TINY_31B, channels=(16, 16, 32, 32)), drop_path_rate=0., num_classes=10)
    with pytest.raises(ValueError, match=r'(?s)shape mismatches: stem\.0\.conv\.weight: checkpoint \(16, 3, 3, 3\) '
                                         r'vs model \(8, 3, 3, 3\).*another variant'):
        model.load_state_dict(wider.state_dict())
    merged = tiny(small_kernel_merged=True)
    with pytest.raises(ValueError, match='small_kernel_merged=True'):
        model.load_state_dict(merged.state_dict())


def test_pretrained_without_a_file_fails_instead_of_training_from_random_weights():
    with pytest.raises(ValueError, match='pretrained_cfg_overlay'):
        timm.create_model('replknet_31b', pretrained=True)


def test_timm_kwargs_override_the_variant_architecture():
    """main.py's --model_overrides passes architecture kwargs through timm; they replace the variant's."""
    model = timm.create_model('replknet_31b', num_classes=3, channels=(8, 16, 32, 64), layers=(1, 1, 1, 1),
                              large_kernel_sizes=(7, 7, 7, 5), small_kernel=3)
    assert model.head.in_features == 64 and len(model.stages[2].blocks) == 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# ---- one model API across replknet.py and unireplknet.py ---------------------------------------------------------------

def test_both_model_files_share_the_timm_api_names_and_error_types():
    import unireplknet
    uni_kwargs = dict(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), kernel_sizes=((3,), (13,), (3,), (3,)))
    x = torch.randn(1, 3, 32, 32)
    for build, own_name, other_name in ((lambda **kw: tiny(**kw), 'use_checkpoint', 'with_cp'),
                                        (lambda **kw: unireplknet.UniRepLKNet(**uni_kwargs, **kw), 'with_cp',
                                         'use_checkpoint')):
        # Both names of the checkpointing switch, and timm's.
        assert build(with_cp=True).grad_checkpointing and build(use_checkpoint=True).grad_checkpointing
        with pytest.raises(ValueError, match='two names of one switch'):
            build(**{own_name: True, other_name: False})
        model = build(num_classes=4).eval()
        model.set_grad_checkpointing(False)
        final, features = model.forward_intermediates(x)
        assert [f.shape[1] for f in features] == [8, 8, 16, 16]
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
        torch.testing.assert_close(model.forward_features(x), final)
        with pytest.raises(ValueError, match='global_pool'):
            model.reset_classifier(3, global_pool='max')
        # A checkpoint of another width: ValueError naming the shapes, in both files.
        with pytest.raises(ValueError, match='shape mismatch'):
            model.load_state_dict(build(num_classes=5).state_dict()) if isinstance(model, RepLKNet) else \
                unireplknet.load_checkpoint_strict(model, build(num_classes=5).state_dict())
        backbone = build(num_classes=None, out_indices=(0, 1, 2, 3))
        with pytest.raises(ValueError, match='backbone'):
            backbone.reset_classifier(3)
        with pytest.raises(ValueError, match='backbone'):
            backbone.forward_head(final)
    assert [f.shape for f in unireplknet.UniRepLKNet(**uni_kwargs, num_classes=None, out_indices=(1, 2)).eval()
            .forward_backbone(x)] == [(1, 8, 4, 4), (1, 16, 2, 2)]
