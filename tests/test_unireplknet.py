"""unireplknet.py: architecture sizes, structural reparameterisation, timm API, checkpointing, SyncBN, iGEMM, errors.

Full-size models are built on the meta device (counts, FLOPs, shapes); numerics use reduced dims with the real depths
and kernel tables, in float32 and float64.
"""
import contextlib
import copy
import logging
import sys
import types
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.utils import reparameterize_model
from torch.utils.flop_counter import FlopCounterMode

import unireplknet
from unireplknet import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock

TINY_DIMS = (8, 16, 32, 64)
# Depthwise convs in float64 run PyTorch's per-channel slow path on CPU: the numerics tests use very few channels.
NUMERICS_DIMS = (4, 8, 16, 32)
# One representative per built-in depth table (a/f/p share (2,2,6,2); s/b/l/xl share (3,3,27,3)).
FAMILIES = ['unireplknet_a', 'unireplknet_n', 'unireplknet_t', 'unireplknet_s']
ALL_KERNELS_KERNEL_SIZES = ((0, 3), (5, 7), (9, 11, 13), (15, 17))

# Release measurements (facts A.12): (training params, deploy params, GFLOPs of the deploy model, input size).
RELEASE_SIZES = {
    'unireplknet_a': (4_649_060, 4_437_300, 0.64, 224),
    'unireplknet_f': (6_489_328, 6_235_216, 0.91, 224),
    'unireplknet_p': (11_080_520, 10_741_704, 1.57, 224),
    'unireplknet_n': (18_818_880, 18_318_560, 2.77, 224),
    'unireplknet_t': (31_693_420, 31_037_980, 4.90, 224),
    'unireplknet_s': (56_456_704, 55_645_984, 9.10, 224),
    'unireplknet_b': (99_089_416, 98_008_456, 47.19, 384),
    'unireplknet_l': (220_076_056, 218_454_616, 105.44, 384),
    'unireplknet_xl': (388_690_984, 386_529_064, 186.8, 384),
}
README_GFLOPS = {'unireplknet_a': 0.6, 'unireplknet_f': 0.9, 'unireplknet_p': 1.6, 'unireplknet_n': 2.8,
                 'unireplknet_t': 4.9, 'unireplknet_s': 9.1, 'unireplknet_b': 47.2, 'unireplknet_l': 105.4,
                 'unireplknet_xl': 187}


def randomise_fusable_state(model: nn.Module, seed: int = 1):
    """Random BN statistics and affine parameters, GRN gamma/beta and layer scales: everything reparam folds."""
    generator = torch.Generator().manual_seed(seed)

    def rand(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                rand(module.running_mean, -0.2, 0.2)
                rand(module.running_var, 0.5, 2.0)
                rand(module.weight, 0.5, 1.5)
                rand(module.bias, -0.2, 0.2)
            elif isinstance(module, unireplknet.GRNwithNHWC):
                rand(module.gamma, -0.5, 0.5)
                rand(module.beta, -0.2, 0.2)
            elif isinstance(module, UniRepLKNetBlock) and module.gamma is not None:
                rand(module.gamma, 0.5, 1.5)
    return model


def relative_error(reference, other):
    return ((reference - other).abs().max() / reference.abs().max()).item()


REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


# ---- sizes -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(RELEASE_SIZES))
def test_parameter_counts_match_the_release(name):
    train_params, deploy_params, _, _ = RELEASE_SIZES[name]
    with torch.device('meta'):
        model = timm.create_model(name)
        deployed = timm.create_model(name, deploy=True)
    assert sum(p.numel() for p in model.parameters()) == train_params
    assert sum(p.numel() for p in deployed.parameters()) == deploy_params
    # Reparameterising the training model gives the deploy structure (meta tensors: no values needed).
    model.reparameterize_unireplknet()
    assert sum(p.numel() for p in model.parameters()) == deploy_params


@pytest.mark.parametrize('name', list(RELEASE_SIZES))
def test_flops_match_the_release(name):
    _, _, release_gflops, size = RELEASE_SIZES[name]
    with torch.device('meta'):
        model = timm.create_model(name, deploy=True).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, size, size))
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert gmacs == pytest.approx(release_gflops, rel=0.02)
    assert round(gmacs, 0 if release_gflops > 150 else 1) == README_GFLOPS[name]


def test_kernel_tables_and_drop_path_schedule():
    with torch.device('meta'):
        model = timm.create_model('unireplknet_s', drop_path_rate=0.4)
    blocks = model.blocks()
    kernels = [3] * 3 + [13] * 3 + [13, 3, 3] * 9 + [13] * 3
    assert [getattr(b.dwconv, 'kernel_size', None) for b in blocks] == [
        k if k >= 7 else (k, k) for k in kernels]
    assert all(isinstance(b.dwconv, DilatedReparamBlock if k >= 7 else nn.Conv2d) for b, k in zip(blocks, kernels))
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0. for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.4, 36).tolist())
    assert rates[0] == 0 and isinstance(blocks[0].drop_path, nn.Identity)


def test_drb_branch_table_is_the_release_one():
    assert unireplknet.DRB_BRANCHES[13] == ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))
    for kernel_size, branches in unireplknet.DRB_BRANCHES.items():
        assert all(r * (k - 1) + 1 <= kernel_size for k, r in branches)
        drb = DilatedReparamBlock(4, kernel_size, attempt_use_lk_impl=False)
        for k, r in branches:
            conv = getattr(drb, f'dil_conv_k{k}_{r}')
            assert conv.kernel_size == (k, k) and conv.dilation == (r, r) and conv.bias is None


def test_init_truncated_normal_and_head_init_scale():
    torch.manual_seed(0)
    model = UniRepLKNet(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), kernel_sizes=((3,), (7,), (3,), (3,)),
                        num_classes=500, head_init_scale=0.001)
    assert model.head.weight.std().item() == pytest.approx(0.02 * 0.001, rel=0.1)
    assert model.head.bias.abs().max() == 0
    linear = model.stages[0][0].pwconv1[1]
    assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert linear.weight.abs().max() <= 2.0  # truncated at +-2 (absolute), as timm's trunc_normal_
    assert torch.equal(model.stages[0][0].gamma, torch.full((16,), 1e-6))
    assert model.stages[0][0].act[1].gamma.abs().max() == 0


# ---- reparameterisation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
@pytest.mark.parametrize('kernel_size', sorted(unireplknet.DRB_BRANCHES))
def test_dilated_reparam_block_merge_is_exact(kernel_size, dtype):
    torch.manual_seed(kernel_size)
    drb = randomise_fusable_state(DilatedReparamBlock(6, kernel_size, attempt_use_lk_impl=False)).to(dtype).eval()
    x = torch.randn(2, 6, 2 * kernel_size, 2 * kernel_size + 3, dtype=dtype)
    with torch.no_grad():
        expected = drb(x)
        drb.merge_dilated_branches()  # the release's name of reparameterize()
        merged = drb(x)
    assert [name for name, _ in drb.named_children()] == ['lk_origin']
    assert relative_error(expected, merged) <= REL_TOL[dtype]
    # The merged kernel equals the sum of the branch kernels convolved explicitly.
    with torch.no_grad():
        explicit = F.conv2d(x, drb.lk_origin.weight, drb.lk_origin.bias, padding=kernel_size // 2, groups=6)
    assert relative_error(explicit, merged) <= REL_TOL[dtype]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
@pytest.mark.parametrize('kernel_size', unireplknet.BLOCK_KERNEL_SIZES)
def test_block_reparameterisation_is_exact(kernel_size, dtype):
    torch.manual_seed(kernel_size)
    block = randomise_fusable_state(UniRepLKNetBlock(8, kernel_size, attempt_use_lk_impl=False)).to(dtype).eval()
    x = torch.randn(2, 8, 20, 20, dtype=dtype)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        reparameterised = block(x)
    assert relative_error(expected, reparameterised) <= REL_TOL[dtype]
    deployed = UniRepLKNetBlock(8, kernel_size, deploy=True, attempt_use_lk_impl=False).to(dtype).eval()
    deployed.load_state_dict(block.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deployed(x), reparameterised)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
@pytest.mark.parametrize('name', FAMILIES)
def test_model_reparameterisation_is_exact_per_family(name, dtype):
    # Small images keep this fast; every kernel tap is covered by the per-kernel-size tests above.
    torch.manual_seed(0)
    # fast_cpu_kernels=False: the fast path's eval-mode DRB runs get_kernel_bias(), which reparameterisation uses too,
    # so the reference must add up the branches.
    model = randomise_fusable_state(timm.create_model(name, dims=NUMERICS_DIMS, attempt_use_lk_impl=False,
                                                      fast_cpu_kernels=False))
    model = model.to(dtype).eval()
    x = torch.randn(1, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        expected_features = model.forward_features(x)
        model.reparameterize_unireplknet()
        features = model.forward_features(x)
        assert relative_error(expected_features, features) <= REL_TOL[dtype]
        assert relative_error(model.forward_head(expected_features), model.forward_head(features)) <= REL_TOL[dtype]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
def test_model_with_every_kernel_size_reparameterises_exactly(dtype):
    torch.manual_seed(0)
    model = UniRepLKNet(depths=(2, 2, 3, 2), dims=NUMERICS_DIMS, kernel_sizes=ALL_KERNELS_KERNEL_SIZES, num_classes=7,
                        attempt_use_lk_impl=False, fast_cpu_kernels=False)  # the reference adds up the branches
    model = randomise_fusable_state(model).to(dtype).eval()
    x = torch.randn(1, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
        reparameterised = reparameterize_model(model)  # timm's walker: a converted deep copy
        output = reparameterised(x)
        assert relative_error(expected, output) <= REL_TOL[dtype]
        assert relative_error(expected, model(x)) == 0  # the original is untouched
    deployed = UniRepLKNet(depths=(2, 2, 3, 2), dims=NUMERICS_DIMS, kernel_sizes=ALL_KERNELS_KERNEL_SIZES,
                           num_classes=7, attempt_use_lk_impl=False, deploy=True, fast_cpu_kernels=False).to(dtype).eval()
    deployed.load_state_dict(reparameterised.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deployed(x), output)


def test_timm_reparameterize_model_gives_the_deploy_state_dict():
    with torch.device('meta'):
        model = timm.create_model('unireplknet_t')
        deployed = timm.create_model('unireplknet_t', deploy=True)
    reparameterize_model(model, inplace=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in deployed.state_dict().items()}
    reparameterize_model(model, inplace=True)  # idempotent
    model.reparameterize_unireplknet()
    assert len(model.state_dict()) == len(deployed.state_dict())


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_reparameterisation_keeps_device_and_dtype(dtype):
    # The release built the DRB identity kernel on the CPU, which broke GPU models; the meta device catches any
    # tensor made on a fixed device, and low-precision dtypes catch any made with a fixed dtype.
    with torch.device('meta'):
        model = UniRepLKNet(depths=(2, 2, 3, 2), dims=TINY_DIMS, kernel_sizes=ALL_KERNELS_KERNEL_SIZES)
    model = model.to(dtype)
    model.reparameterize_unireplknet()
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {('meta', dtype)}


def test_reparameterised_model_trains_no_more_bn_and_has_no_layer_scale():
    model = UniRepLKNet(depths=(1, 1, 1, 1), dims=TINY_DIMS, kernel_sizes=((3,), (13,), (0,), (5,)), num_classes=3)
    model.reparameterize_unireplknet()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(b.gamma is None and b.act[1].beta is None and b.deploy for b in model.blocks())
    assert model.deploy


# ---- backbone / features ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(RELEASE_SIZES))
def test_features_only_returns_normed_stage_outputs_for_every_variant(name):
    dims = unireplknet.VARIANTS[name][1]
    with torch.device('meta'):
        model = timm.create_model(name, features_only=True)
        features = model(torch.empty(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 96 // s) for c, s in zip(dims, (4, 8, 16, 32))]
    assert model.feature_info.channels() == list(dims)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.module_name() == ['norm0', 'norm1', 'norm2', 'norm3']
    assert not hasattr(model, 'head') and 'num_classes' not in model.pretrained_cfg


def test_backbone_mode_applies_each_stage_layernorm():
    torch.manual_seed(0)
    model = UniRepLKNet(num_classes=None, init_cfg=dict(checkpoint=None), depths=(1, 1, 2, 1), dims=TINY_DIMS,
                        kernel_sizes=((3,), (13,), (13, 3), (13,))).eval()
    with torch.no_grad():
        for i in range(4):  # non-trivial LayerNorm affine, so a missing norm would show
            getattr(model, f'norm{i}').weight.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 64, 64)
        features = model(x)
        h = x
        for i in range(4):
            h = model.stages[i](model.downsample_layers[i](h))
            expected = F.layer_norm(h.permute(0, 2, 3, 1), (h.shape[1],), getattr(model, f'norm{i}').weight,
                                    getattr(model, f'norm{i}').bias, 1e-6).permute(0, 3, 1, 2)
            torch.testing.assert_close(features[i], expected)


def test_out_indices_builds_only_the_needed_stages():
    with torch.device('meta'):
        model = timm.create_model('unireplknet_a', features_only=True, out_indices=(1, 2))
        features = model(torch.empty(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [80, 160]
    assert len(model.stages) == 3 and not hasattr(model, 'norm0') and not hasattr(model, 'norm3')
    assert model.feature_info.channels() == [80, 160]


# ---- timm API --------------------------------------------------------------------------------------------------

def tiny_model(**kwargs):
    return UniRepLKNet(depths=(1, 1, 2, 1), dims=TINY_DIMS, kernel_sizes=((3,), (7,), (13, 3), (5,)), **kwargs)


def test_all_nine_names_are_registered_with_pretrained_tags():
    assert sorted(timm.list_models('unireplknet_*')) == sorted(unireplknet.MODEL_NAMES)
    assert set(timm.list_pretrained('unireplknet_s*')) == {
        'unireplknet_s.in1k', 'unireplknet_s.in22k', 'unireplknet_s.in22k_ft_in1k'}
    with torch.device('meta'):
        model = timm.create_model('unireplknet_xl')
    assert model.pretrained_cfg['tag'] == 'in22k_ft_in1k' and model.pretrained_cfg['input_size'] == (3, 384, 384)
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg['hf_hub_filename'] == 'unireplknet_xl_in22k_to_in1k_384_acc87.96.pth'


def test_create_model_passes_the_training_code_arguments():
    with torch.device('meta'):
        model = timm.create_model('unireplknet_s', pretrained=False, num_classes=37, drop_path_rate=0.2,
                                  layer_scale_init_value=0.5, head_init_scale=0.1, with_cp=True, use_sync_bn=True,
                                  attempt_use_lk_impl=False, in_chans=1)
    assert model.head.out_features == 37 and model.downsample_layers[0][0].in_channels == 1
    assert all(b.with_cp for b in model.blocks())
    assert isinstance(model.stages[1][0].dwconv.origin_bn, nn.SyncBatchNorm)
    assert model.stages[0][0].gamma.shape == (96,)
    in22k = timm.create_model('unireplknet_s.in22k', pretrained=False, attempt_use_lk_impl=False, depths=(1, 1, 1, 1),
                              dims=TINY_DIMS, kernel_sizes=((3,),) * 4)
    assert in22k.num_classes == 21841  # the tag's class count is the default


def test_forward_head_reset_classifier_and_pre_logits():
    torch.manual_seed(0)
    model = tiny_model(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 64, 2, 2)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, 64)
        torch.testing.assert_close(model.head(pre_logits), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(3, global_pool='max')


def test_in_chans_1_for_audio_spectrograms():
    model = tiny_model(in_chans=1, num_classes=4)
    assert model(torch.randn(2, 1, 64, 32)).shape == (2, 4)


def test_weight_decay_follows_the_release_recipe():
    """Only 1-D tensors and biases escape weight decay; GRN gamma/beta, (1, 1, 1, C), are decayed as in the release."""
    model = tiny_model()
    assert model.no_weight_decay() == set()
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    grn = {n for n, _ in model.named_parameters() if n.endswith(('act.1.gamma', 'act.1.beta'))}
    assert len(grn) == 2 * 5 and grn <= decayed_names
    assert not any(n.endswith(('.bias', '.gamma')) or 'norm' in n for n in decayed_names - grn)


def test_group_matcher_orders_stem_stages_and_head_for_layer_decay():
    model = tiny_model()
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale_of = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            scale_of[p] = group['lr_scale']
    named = dict(model.named_parameters())
    stem = scale_of[named['downsample_layers.0.0.weight']]
    first_block = scale_of[named['stages.0.0.pwconv1.1.weight']]
    last_block = scale_of[named['stages.3.0.pwconv1.1.weight']]
    head = scale_of[named['head.weight']]
    assert stem < first_block < last_block < head == 1.0
    assert scale_of[named['downsample_layers.2.0.weight']] == scale_of[named['stages.2.0.se.up.weight']]
    coarse = model.group_matcher(coarse=True)
    assert set(coarse) == {'stem', 'blocks'}


# ---- with_cp and SyncBN --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # e.g. the use_reentrant warning of the release's checkpointing
        yield


def test_with_cp_gives_the_same_outputs_gradients_and_bn_statistics():
    torch.manual_seed(0)
    plain = tiny_model(drop_path_rate=0.3, num_classes=5).double().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    x_cp = x.detach().clone().requires_grad_(True)
    torch.manual_seed(1)
    plain(x).square().sum().backward()
    torch.manual_seed(1)
    with warnings_as_errors():
        checkpointed(x_cp).square().sum().backward()
    for (name, p), p_cp in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, p_cp.grad), name
    assert torch.equal(x.grad, x_cp.grad)
    # The recomputation in backward must not count the batch a second time in the BN running statistics.
    state, state_cp = plain.state_dict(), checkpointed.state_dict()
    assert all(torch.equal(state[k], state_cp[k]) for k in state)


def test_with_cp_keeps_no_stem_activations_for_backward():
    # The stem's activations at half resolution are the largest outside the blocks; with_cp must not keep them.
    def saved_shapes(model):
        shapes = []

        def pack(tensor):
            shapes.append(tuple(tensor.shape))
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.randn(2, 3, 32, 32))
        return shapes

    model = tiny_model().train()
    stem_activation = (2, model.dims[0] // 2, 16, 16)
    assert stem_activation in saved_shapes(model)
    model.set_grad_checkpointing(True)
    assert stem_activation not in saved_shapes(model)


def test_with_cp_is_skipped_without_grad(monkeypatch):
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint',
                        lambda *args, **kwargs: calls.append(args[0]) or checkpoint(*args, **kwargs))
    model = tiny_model(with_cp=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        output = model(x)
    assert calls == []
    torch.testing.assert_close(model(x), output)  # with gradients: every block and the stem are checkpointed
    assert len(calls) == 1 + sum(1 for _ in model.blocks())


def test_sync_bn_runs_in_a_single_cpu_process():
    torch.manual_seed(0)
    model = tiny_model(use_sync_bn=True, num_classes=3).train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert norms[0].num_batches_tracked.item() == 1
    reference = tiny_model(num_classes=3)
    reference.load_state_dict(model.state_dict())  # same keys as plain BatchNorm
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


# ---- iGEMM large-kernel implementation ----------------------------------------------------------------------------

class FakeImplicitGemmConv(nn.Conv2d):
    """Stand-in with the interface of DepthWiseConv2dImplicitGEMM: (channels, kernel, bias), implicit 'same' padding
    and, like the real one, no padding attribute of its own (padding stays 0)."""

    def __init__(self, channels, kernel, bias=False):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.kernel_size[0] // 2, groups=self.groups)


@pytest.fixture
def fresh_implicit_gemm_lookup():
    unireplknet._implicit_gemm_conv_class.cache_clear()
    yield
    unireplknet._implicit_gemm_conv_class.cache_clear()


def test_implicit_gemm_used_for_eligible_kernels_and_survives_reparam(monkeypatch, fresh_implicit_gemm_lookup):
    fake_package = types.ModuleType('depthwise_conv2d_implicit_gemm')
    fake_package.DepthWiseConv2dImplicitGEMM = FakeImplicitGemmConv
    monkeypatch.setitem(sys.modules, 'depthwise_conv2d_implicit_gemm', fake_package)
    torch.manual_seed(0)
    model = randomise_fusable_state(tiny_model(attempt_use_lk_impl=True)).eval()
    reference = tiny_model(attempt_use_lk_impl=False).eval()
    reference.load_state_dict(model.state_dict())
    lark = model.stages[1][0].dwconv
    assert type(lark.lk_origin) is FakeImplicitGemmConv
    assert not isinstance(lark.dil_conv_k5_1, FakeImplicitGemmConv)  # dilated: not eligible
    assert not isinstance(model.stages[0][0].dwconv, FakeImplicitGemmConv)  # 3x3
    assert not isinstance(model.stages[3][0].dwconv, FakeImplicitGemmConv)  # 5x5: not a large kernel
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        model.reparameterize_unireplknet()
        assert type(model.stages[1][0].dwconv.lk_origin) is FakeImplicitGemmConv
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_missing_implicit_gemm_falls_back_with_one_log_line(monkeypatch, caplog, fresh_implicit_gemm_lookup):
    monkeypatch.setitem(sys.modules, 'depthwise_conv2d_implicit_gemm', None)  # import fails
    with caplog.at_level(logging.INFO, logger='unireplknet'):
        tiny_model(attempt_use_lk_impl=True)
        tiny_model(attempt_use_lk_impl=True)
    messages = [r.getMessage() for r in caplog.records if 'depthwise_conv2d_implicit_gemm' in r.getMessage()]
    assert len(messages) == 1
    assert all(type(m) is not FakeImplicitGemmConv for m in tiny_model().modules())


# ---- bad input --------------------------------------------------------------------------------------------------

def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match='unireplknet_a, unireplknet_f.*unireplknet_xl.*unireplknet_s'):
        unireplknet.validate_model_name('unireplknet_ss')
    with pytest.raises(ValueError, match='released: in1k, in22k_ft_in1k, in22k'):
        unireplknet.validate_model_name('unireplknet_s.in21k')
    unireplknet.validate_model_name('unireplknet_b.in22k')


@pytest.mark.parametrize('kernel_size', [1, 2, 4, 6, 19, 31])
def test_unsupported_block_kernel_size_names_the_allowed_ones(kernel_size):
    with pytest.raises(ValueError, match=r'0 \(no token mixer\), 3 or 5.*7 to 17'):
        UniRepLKNetBlock(8, kernel_size)
    with pytest.raises(ValueError, match='Unsupported kernel sizes'):
        UniRepLKNet(depths=(1, 1, 1, 1), dims=TINY_DIMS, kernel_sizes=((3,), (kernel_size,), (3,), (3,)))


def test_drb_kernel_size_must_be_in_the_branch_table():
    with pytest.raises(ValueError, match=r'\[5, 7, 9, 11, 13, 15, 17\]'):
        DilatedReparamBlock(8, 3)


def test_depths_without_a_kernel_table_ask_for_kernel_sizes():
    with pytest.raises(ValueError, match='pass kernel_sizes'):
        UniRepLKNet(depths=(2, 2, 4, 2))
    with pytest.raises(ValueError, match=r'depths \(2, 2, 4, 2\).*\(2, 2, 3, 2\)'):
        UniRepLKNet(depths=(2, 2, 4, 2), kernel_sizes=((3, 3), (13, 13), (13, 3, 3), (13, 13)))
    with pytest.raises(ValueError, match='4 stages'):
        UniRepLKNet(depths=(2, 2, 2), dims=(8, 16, 32))


def test_backbone_mode_and_num_classes_conflict_is_explained():
    with pytest.raises(ValueError, match='num_classes=None'):
        UniRepLKNet(init_cfg=dict(checkpoint=None), num_classes=1000)
    with pytest.raises(ValueError, match='num_classes=0'):
        UniRepLKNet(num_classes=None)
    with pytest.raises(ValueError, match='out_indices'):
        UniRepLKNet(num_classes=None, out_indices=(4,))


def test_unknown_constructor_arguments_are_reported(caplog):
    with caplog.at_level(logging.WARNING, logger='unireplknet'):
        tiny_model(disable_iGEMM=True)
    assert "ignores unknown arguments: ['disable_iGEMM']" in caplog.text
