"""unireplknet.py CPU fast paths compute the same function as the plain layers they replace.

The fast paths (BENCHMARKS.md): channels_last on CPU, dilated DRB branches by space-to-batch in training, the
eval-mode DRB as one conv with the fused kernel, and GRN's scale folded into the following Linear. Reference computations here use plain F.conv2d with dilation and
the block's own BatchNorms, in float64 so that any difference beyond rounding shows.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import unireplknet
from unireplknet import (
    DilatedReparamBlock, GRNwithNHWC, dilated_depthwise_conv_by_space_to_batch, grn_then_linear, same_depthwise_conv,
)

DILATED_BRANCHES = sorted({(k, r) for branches in unireplknet.DRB_BRANCHES.values() for k, r in branches if r > 1})
# Every depthwise conv of a training-form DRB: the large kernels (dilation 1) and all branches.
DRB_CONVS = sorted({(k, 1) for k in unireplknet.DRB_BRANCHES} | {
    (k, r) for branches in unireplknet.DRB_BRANCHES.values() for k, r in branches})


def randomise_batch_norms(module, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.running_mean.copy_(torch.rand(norm.running_mean.shape, generator=generator) - 0.5)
                norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
                norm.bias.copy_(torch.rand(norm.bias.shape, generator=generator) - 0.5)
    return module


def reference_drb_forward(drb, x):
    """The Dilated Reparam Block written out with plain (dilated) convs and the block's own BNs."""
    out = drb.origin_bn(F.conv2d(x, drb.lk_origin.weight, padding=drb.kernel_size // 2, groups=x.shape[1]))
    for k, r in drb.branches:
        weight = getattr(drb, f'dil_conv_k{k}_{r}').weight
        branch = F.conv2d(x, weight, padding=r * (k - 1) // 2, dilation=r, groups=x.shape[1])
        out = out + getattr(drb, f'dil_bn_k{k}_{r}')(branch)
    return out


def assert_equals_conv2d_with_gradients(conv, kernel, dilation, cases):
    """conv(x, weight, dilation) against F.conv2d in float64 for each (height, width, channels_last) case: the output
    and the gradients of x and weight."""
    for height, width, channels_last in cases:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(3, 1, kernel, kernel, dtype=torch.float64)
        x_ref, w_ref = x.clone().requires_grad_(), weight.clone().requires_grad_()
        x_fast, w_fast = x.clone().requires_grad_(), weight.clone().requires_grad_()
        expected = F.conv2d(x_ref, w_ref, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=3)
        result = conv(x_fast, w_fast, dilation)
        torch.testing.assert_close(result, expected)
        grad = torch.randn_like(expected)
        torch.testing.assert_close(torch.autograd.grad(result, [x_fast, w_fast], grad),
                                   torch.autograd.grad(expected, [x_ref, w_ref], grad))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('kernel, dilation', DILATED_BRANCHES)
def test_space_to_batch_equals_the_dilated_conv_with_gradients(kernel, dilation, channels_last):
    # Sizes that are not multiples of the dilation, and one smaller than the dilated kernel's reach.
    assert_equals_conv2d_with_gradients(dilated_depthwise_conv_by_space_to_batch, kernel, dilation,
                                        [(9, 14, channels_last), (3, 5, channels_last)])


@pytest.mark.parametrize('kernel, dilation', DRB_CONVS)
def test_same_depthwise_conv_equals_conv2d_with_gradients(kernel, dilation):
    # Odd and even sizes, one smaller than the kernel's reach; NCHW and channels_last; for dilated kernels padded by
    # more than 4, the small maps take the dense-kernel path and the 24x26 map the space-to-batch path.
    assert_equals_conv2d_with_gradients(same_depthwise_conv, kernel, dilation,
                                        [(9, 14, True), (3, 5, False), (24, 26, True)])


def test_same_depthwise_conv_gradients_pass_gradcheck():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    for dilation in (1, 2, 5):  # oneDNN's dilated conv, and space-to-batch (padding > 4)
        assert torch.autograd.gradcheck(lambda a, b: same_depthwise_conv(a, b, dilation), (x, weight))
    large = torch.randn(2, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: same_depthwise_conv(a, b), (x, large))


def test_training_drb_runs_under_cpu_bfloat16_autocast_like_the_plain_convs():
    torch.manual_seed(0)
    drb = DilatedReparamBlock(8, 13, attempt_use_lk_impl=False).train()
    reference = copy.deepcopy(drb)
    x = torch.randn(2, 8, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, expected = drb(x), reference_drb_forward(reference, x)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    expected.float().sum().backward()
    for (name, p), p_ref in zip(drb.named_parameters(), reference.parameters()):
        assert p.grad.dtype == p.dtype, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0.1, atol=0.5, msg=name)


@pytest.mark.parametrize('kernel_size', sorted(unireplknet.DRB_BRANCHES))
def test_training_drb_matches_plain_dilated_convs_with_gradients_and_bn_statistics(kernel_size):
    torch.manual_seed(kernel_size)
    drb = randomise_batch_norms(DilatedReparamBlock(4, kernel_size, attempt_use_lk_impl=False)).double().train()
    reference = copy.deepcopy(drb)
    x = torch.randn(2, 4, 11, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = drb(x_fast), reference_drb_forward(reference, x_ref)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    for (name, p), p_ref in zip(drb.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    for (name, b), b_ref in zip(drb.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, b_ref, msg=name)


@pytest.mark.parametrize('kernel_size', sorted(unireplknet.DRB_BRANCHES))
def test_eval_drb_is_one_fused_conv_with_the_branches_result(kernel_size):
    torch.manual_seed(kernel_size)
    drb = randomise_batch_norms(DilatedReparamBlock(4, kernel_size, attempt_use_lk_impl=False)).double().eval()
    x = torch.randn(2, 4, 2 * kernel_size, 2 * kernel_size + 3, dtype=torch.float64)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            out = drb(x)
        torch.testing.assert_close(out, reference_drb_forward(drb, x))
    one_conv_flops = 2 * x.numel() * kernel_size ** 2
    assert counter.get_total_flops() == one_conv_flops
    # Gradients (e.g. for ERF maps, computed in eval mode) flow through the fused kernel to every branch.
    x.requires_grad_()
    drb(x).sum().backward()
    assert all(p.grad is not None for name, p in drb.named_parameters() if 'conv' in name or 'lk_origin' in name)


@pytest.mark.parametrize('size', [3, 2], ids=['folded', 'plain order'])  # 9 pixels > 5 outputs >= 4 pixels
@pytest.mark.parametrize('training_form', [True, False], ids=['beta, no bias', 'deploy: bias, no beta'])
def test_grn_then_linear_equals_grn_followed_by_linear_with_gradients(training_form, size):
    torch.manual_seed(0)
    grn = GRNwithNHWC(12, use_bias=training_form).double()
    linear = nn.Linear(12, 5, bias=not training_form).double()
    with torch.no_grad():
        for p in grn.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(3, size, size, 12, dtype=torch.float64)
    x[0, :, :, 1] = 0  # a zero norm: gradient 0, as torch defines the norm's gradient there
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = grn_then_linear(grn, linear, x_fast), linear(grn(x_ref))
    torch.testing.assert_close(out, expected)
    fast_grads = torch.autograd.grad(out, [x_fast, *grn.parameters(), *linear.parameters()], torch.ones_like(out))
    ref_grads = torch.autograd.grad(expected, [x_ref, *grn.parameters(), *linear.parameters()], torch.ones_like(out))
    for fast, ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast, ref)


@pytest.mark.parametrize('shape', [(3, 700, 1000), (4, 5, 6), (0, 5, 6)], ids=['one sample per chunk', 'one chunk', 'empty'])
def test_per_channel_l2_norm_equals_vector_norm(shape):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(unireplknet.per_channel_l2_norm(x), torch.linalg.vector_norm(x, dim=1))
    low_precision = x.to(torch.bfloat16)
    # Accumulated in float32 and returned in bfloat16, as vector_norm does.
    torch.testing.assert_close(unireplknet.per_channel_l2_norm(low_precision),
                               torch.linalg.vector_norm(low_precision, dim=1))


def test_grn_gradient_is_zero_not_nan_for_an_all_zero_channel():
    grn = GRNwithNHWC(3).double()
    with torch.no_grad():
        grn.gamma.fill_(0.5)
    x = torch.randn(2, 4, 4, 3, dtype=torch.float64)
    x[0, :, :, 1] = 0
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    grn(x).sum().backward()
    expected = GRNwithNHWC(3).double()
    expected.load_state_dict(grn.state_dict())
    reference_norm = torch.linalg.vector_norm(x_ref, dim=(1, 2), keepdim=True)
    normalized = reference_norm / (reference_norm.mean(dim=-1, keepdim=True) + 1e-6)
    ((expected.gamma * normalized + 1) * x_ref + expected.beta).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, x_ref.grad)


def disable_fast_paths(monkeypatch):
    """Make unireplknet compute as the release does: NCHW, dilated convs, branch by branch also in eval mode, GRN
    output materialised before the Linear."""
    monkeypatch.setattr(unireplknet, 'to_fast_layout', lambda x: x)
    monkeypatch.setattr(unireplknet, 'grn_then_linear', lambda grn, linear, x: linear(grn(x)))
    monkeypatch.setattr(unireplknet, 'same_depthwise_conv', lambda x, weight, dilation=1: F.conv2d(
        x, weight, padding=dilation * (weight.shape[-1] - 1) // 2, dilation=dilation, groups=x.shape[1]))
    monkeypatch.setattr(DilatedReparamBlock, 'forward',
                        lambda self, x: self.lk_origin(x) if self.deploy else self.forward_branches(x))


def test_model_with_fast_paths_matches_the_release_computation(monkeypatch):
    torch.manual_seed(0)
    fast = randomise_batch_norms(unireplknet.UniRepLKNet(depths=(2, 2, 2, 2), dims=(4, 8, 16, 32), num_classes=5,
                                                         kernel_sizes=((3, 3), (13, 13), (13, 3), (13, 13))))
    reference = copy.deepcopy(fast)
    layouts = []
    for stage in fast.stages:
        stage.register_forward_hook(
            lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    # float32: in float64, CPU depthwise convs take a slow per-channel path and this test would take ~20 s.
    x = torch.randn(2, 3, 48, 48)
    fast_outputs = [fast.train()(x), fast.eval()(x)]
    assert layouts == [True] * 8  # every stage ran in channels_last on the CPU
    fast_outputs[0].square().sum().backward()
    disable_fast_paths(monkeypatch)
    reference_outputs = [reference.train()(x), reference.eval()(x)]
    reference_outputs[0].square().sum().backward()
    for out, expected in zip(fast_outputs, reference_outputs):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for (name, p), p_ref in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_model_trains_under_cpu_bfloat16_autocast_close_to_float32():
    """The custom autograd paths (DRB convs, GRN norm and fold) keep autocast's dtypes in forward and backward."""
    def gradients(autocast):
        torch.manual_seed(0)
        model = unireplknet.UniRepLKNet(depths=(2, 2, 2, 2), dims=(8, 16, 32, 64), num_classes=5,
                                        kernel_sizes=((3, 3), (13, 13), (13, 3), (13, 13)), layer_scale_init_value=1.0)
        x, labels = torch.randn(4, 3, 96, 96), torch.randint(0, 5, (4,))
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        F.cross_entropy(logits.float(), labels).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    low, full = gradients(True), gradients(False)
    for name, grad in full.items():
        assert low[name].dtype == torch.float32 and torch.isfinite(low[name]).all(), name
        if grad.norm() > 1e-4 * grad.numel() ** 0.5:  # BN-cancelled parameters have ~0 gradient: nothing to compare
            assert (low[name] - grad).norm() <= 0.3 * grad.norm(), name  # the release computation in bf16: <= 0.2


def test_custom_grn_functions_are_used_on_cpu_only(monkeypatch):
    """Other devices keep the release's GRN computation: the CPU-tuned Functions were not measured there."""
    def refuse(*args):
        raise AssertionError('CPU-only Function used on another device')
    monkeypatch.setattr(unireplknet._GRNThenLinear, 'apply', refuse)
    monkeypatch.setattr(unireplknet._SpatialL2Norm, 'apply', refuse)
    grn, linear = GRNwithNHWC(12).to('meta'), nn.Linear(12, 5).to('meta')
    x = torch.empty(2, 8, 8, 12, device='meta')  # 64 pixels > 5 outputs: the fold's case on the CPU
    assert grn_then_linear(grn, linear, x).shape == (2, 8, 8, 5)
