"""unireplknet_cpu.py (the optional CPU speed-ups) computes the same function as the plain model, and gives way to
hooks and replaced modules.

Reference computations use plain F.conv2d with dilation and the block's own BatchNorms, or the model built with
fast_cpu_kernels=False, in float64 where any difference beyond rounding should show.
"""
import copy
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.cpp_extension

import unireplknet
import unireplknet_cpu
from conftest import skip_unless_ci
from unireplknet import DilatedReparamBlock, GRNwithNHWC
from unireplknet_cpu import (
    FastGRN, convert_to_fast_cpu, dilated_depthwise_conv_padded_first, grn_then_linear, same_depthwise_conv,
)

BFLOAT16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: the spacing of bfloat16 numbers at 1

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
def test_padded_first_equals_the_dilated_conv_with_gradients(kernel, dilation, channels_last):
    # Sizes that are not multiples of the dilation, and one smaller than the dilated kernel's reach.
    assert_equals_conv2d_with_gradients(dilated_depthwise_conv_padded_first, kernel, dilation,
                                        [(9, 14, channels_last), (3, 5, channels_last)])


@pytest.mark.parametrize('avx512', [True, False], ids=['AVX-512 path', 'AVX2 path'])
@pytest.mark.parametrize('kernel, dilation', DRB_CONVS)
def test_same_depthwise_conv_equals_conv2d_with_gradients(kernel, dilation, avx512, monkeypatch):
    # Both machine classes' paths on any machine (dilated convs padded by more than 4: oneDNN's own padding, or the
    # padding written out first). Odd and even sizes, one smaller than the kernel's reach; NCHW and channels_last.
    monkeypatch.setattr(unireplknet_cpu, 'ONEDNN_DILATED_CONV_FAST_AT_ANY_PADDING', avx512)
    padded_first = []
    monkeypatch.setattr(unireplknet_cpu, 'dilated_depthwise_conv_padded_first', lambda *args, f=(
        unireplknet_cpu.dilated_depthwise_conv_padded_first): (padded_first.append(1), f(*args))[1])
    assert_equals_conv2d_with_gradients(same_depthwise_conv, kernel, dilation,
                                        [(9, 14, True), (3, 5, False), (24, 26, True)])
    assert bool(padded_first) == (not avx512 and dilation > 1 and dilation * (kernel - 1) // 2 > 4)


@pytest.mark.parametrize('as_15x15', [True, False], ids=['AVX-512 path', 'AVX2 path'])
def test_13x13_depthwise_conv_over_64_channels_equals_conv2d(as_15x15, monkeypatch):
    # The AVX-512 rule (a zero ring makes it a 15x15 kernel) applies to float32 and bfloat16 convs over >= 64
    # channels, so this compares float32 against a float64 reference: training (output, both gradients) and the
    # deploy form's biased conv. A misplaced ring would be off by whole products, far beyond float32 rounding.
    monkeypatch.setattr(unireplknet_cpu, 'ONEDNN_13X13_DEPTHWISE_FASTER_AS_15X15', as_15x15)
    kernel_sizes = []
    monkeypatch.setattr(F, 'conv2d', lambda x, weight, *args, f=F.conv2d, **kwargs: (
        kernel_sizes.append(weight.shape[-1]), f(x, weight, *args, **kwargs))[1])
    x = torch.randn(2, 64, 9, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.randn(64, 1, 13, 13, requires_grad=True), torch.randn(64)
    x64, weight64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    expected = F.conv2d(x64, weight64, padding=6, groups=64)
    result = same_depthwise_conv(x, weight)
    grad = torch.randn_like(expected)
    assert kernel_sizes == [13, 15 if as_15x15 else 13]
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(torch.autograd.grad(result, [x, weight], grad.float()),
                         torch.autograd.grad(expected, [x64, weight64], grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)
    deployed = unireplknet_cpu.FastDepthwiseConv2d(64, 64, 13, padding=6, groups=64)
    with torch.no_grad():
        deployed.weight.copy_(weight)
        deployed.bias.copy_(bias)
        torch.testing.assert_close(deployed(x).double(), expected + bias.double().view(-1, 1, 1), rtol=1e-5, atol=1e-4)
    assert kernel_sizes[-1] == (15 if as_15x15 else 13)


def built_weight_grad_kernel():
    """The compiled weight-gradient kernel; it must build wherever a C++ compiler is installed (CI has one)."""
    if shutil.which(os.environ.get('CXX', 'c++')) is None:
        skip_unless_ci('needs a C++ compiler (.ci/run installs g++); without one unireplknet_cpu falls back to the '
                       'batch folding, tested below')
    kernel = unireplknet_cpu.compiled_weight_grad_kernel()
    assert kernel is not None, 'a C++ compiler is installed but the kernel did not build: see the warning'
    return kernel


@pytest.mark.parametrize('kernel, dilation', DRB_CONVS)
def test_compiled_weight_grad_equals_conv2d_weight_gradient_in_float64(kernel, dilation):
    # Channel counts with every tail of the 16-channel blocks (none, 8, 8 + 1s, 1s), batches over one and several
    # 8-sample chunks, maps smaller than the kernel's reach; channels_last and NCHW inputs.
    weight_grad = built_weight_grad_kernel().depthwise_weight_grad
    for batch, channels, height, width, channels_last in [(9, 16, 9, 14, True), (2, 24, 3, 5, False),
                                                          (17, 43, 12, 7, True), (1, 3, 24, 26, False)]:
        x = torch.randn(batch, channels, height, width, dtype=torch.float64)
        grad_out = torch.randn_like(x)
        if channels_last:
            x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
        expected = torch.nn.grad.conv2d_weight(x, (channels, 1, kernel, kernel), grad_out, dilation=dilation,
                                               padding=dilation * (kernel - 1) // 2, groups=channels)
        torch.testing.assert_close(weight_grad(x, grad_out, kernel, dilation), expected)


def test_compiled_weight_grad_is_the_same_on_any_thread_count():
    weight_grad = built_weight_grad_kernel().depthwise_weight_grad
    x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in torch.randn(2, 20, 40, 14, 14))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(weight_grad(x, grad_out, 7, 2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_weight_grad_falls_back_to_batch_folding_when_the_kernel_is_off_or_cannot_build(monkeypatch):
    x, grad_out = torch.randn(2, 2, 3, 8, 9, dtype=torch.float64).unbind()
    expected = torch.nn.grad.conv2d_weight(x, (3, 1, 3, 3), grad_out, dilation=2, padding=2, groups=3)
    folds = []
    monkeypatch.setattr(unireplknet_cpu, 'depthwise_conv_weight_grad_by_batch_folding', lambda *args, f=(
        unireplknet_cpu.depthwise_conv_weight_grad_by_batch_folding): (folds.append(1), f(*args))[1])
    unireplknet_cpu.compiled_weight_grad_kernel.cache_clear()
    try:
        monkeypatch.setenv('UNIREPLKNET_CPU_EXTENSION', '0')
        torch.testing.assert_close(unireplknet_cpu.depthwise_conv_weight_grad(x, grad_out, 3, 2), expected)
        assert folds == [1]
        unireplknet_cpu.compiled_weight_grad_kernel.cache_clear()
        monkeypatch.delenv('UNIREPLKNET_CPU_EXTENSION')

        def no_compiler(*args, **kwargs):
            raise RuntimeError('Ninja is required to load C++ extensions')
        monkeypatch.setattr(torch.utils.cpp_extension, 'load_inline', no_compiler)
        with pytest.warns(UserWarning, match='could not build the CPU weight-gradient kernel'):
            torch.testing.assert_close(unireplknet_cpu.depthwise_conv_weight_grad(x, grad_out, 3, 2), expected)
        assert folds == [1, 1]
    finally:
        unireplknet_cpu.compiled_weight_grad_kernel.cache_clear()


def test_same_depthwise_conv_gradients_pass_gradcheck():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    for dilation in (1, 2, 5):  # oneDNN's dilated conv; padding > 4 (padded first on machines without AVX-512)
        assert torch.autograd.gradcheck(lambda a, b: same_depthwise_conv(a, b, dilation), (x, weight))
    large = torch.randn(2, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: same_depthwise_conv(a, b), (x, large))


def test_training_drb_runs_under_cpu_bfloat16_autocast_like_the_plain_convs():
    torch.manual_seed(0)
    reference = DilatedReparamBlock(8, 13, attempt_use_lk_impl=False).train()
    drb = convert_to_fast_cpu(copy.deepcopy(reference))
    x = torch.randn(2, 8, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, expected = drb(x), reference_drb_forward(reference, x)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)
    # A random-weighted sum: through training-mode BatchNorm the gradient of out.sum() is ~0, which zeros would match.
    weights = torch.randn(out.shape)
    (out.float() * weights).sum().backward()
    (expected.float() * weights).sum().backward()
    for (name, p), p_ref in zip(drb.named_parameters(), reference.parameters()):
        assert p.grad.dtype == p.dtype, name
        # Both computed in bfloat16 in a different order: a few bfloat16 roundings apart (measured: <= 0.45 eps).
        assert (p.grad - p_ref.grad).norm() <= 4 * BFLOAT16_EPS * p_ref.grad.norm(), name


@pytest.mark.parametrize('kernel_size', sorted(unireplknet.DRB_BRANCHES))
def test_training_drb_matches_plain_dilated_convs_with_gradients_and_bn_statistics(kernel_size):
    torch.manual_seed(kernel_size)
    reference = randomise_batch_norms(DilatedReparamBlock(4, kernel_size, attempt_use_lk_impl=False)).double().train()
    drb = convert_to_fast_cpu(copy.deepcopy(reference))
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
def test_eval_drb_is_one_fused_conv_with_the_branches_result(kernel_size, monkeypatch):
    # (Counted by calls, not FlopCounterMode: its global module hooks make the fast paths give way, as any hook does.)
    convs = []
    monkeypatch.setattr(F, 'conv2d', lambda *args, f=F.conv2d, **kwargs: (
        convs.append(args[1].shape), f(*args, **kwargs))[1])
    torch.manual_seed(kernel_size)
    drb = randomise_batch_norms(DilatedReparamBlock(4, kernel_size, attempt_use_lk_impl=False)).double().eval()
    drb = convert_to_fast_cpu(drb)
    x = torch.randn(2, 4, 2 * kernel_size, 2 * kernel_size + 3, dtype=torch.float64)
    with torch.no_grad():
        out = drb(x)
        assert convs == [(4, 1, kernel_size, kernel_size)]
        torch.testing.assert_close(out, reference_drb_forward(drb, x))
    # Gradients (e.g. for ERF maps, computed in eval mode) flow through the fused kernel to every branch.
    x.requires_grad_()
    drb(x).sum().backward()
    assert all(p.grad is not None for name, p in drb.named_parameters() if 'conv' in name or 'lk_origin' in name)


def random_grn_and_linear(training_form):
    """A float64 GRN (12 channels, non-trivial gamma and beta) and the Linear 12 -> 5 after it, in the training form
    (GRN with beta, Linear without bias) or the deploy form (the other way round)."""
    torch.manual_seed(0)
    grn = GRNwithNHWC(12, use_bias=training_form).double()
    linear = nn.Linear(12, 5, bias=not training_form).double()
    with torch.no_grad():
        for p in grn.parameters():
            p.uniform_(-0.5, 0.5)
    return grn, linear


@pytest.mark.parametrize('size', [5, 4], ids=['folded', 'GRN then 1x1 conv'])  # 25 pixels >= 4 x 5 outputs > 16
@pytest.mark.parametrize('training_form', [True, False], ids=['beta, no bias', 'deploy: bias, no beta'])
def test_grn_then_linear_equals_grn_followed_by_linear_with_gradients(training_form, size):
    grn, linear = random_grn_and_linear(training_form)
    x = torch.randn(3, size, size, 12, dtype=torch.float64)
    x[0, :, :, 1] = 0  # a zero norm: gradient 0, as torch defines the norm's gradient there
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = grn_then_linear(grn, linear, x_fast), linear(grn(x_ref))
    torch.testing.assert_close(out, expected)
    fast_grads = torch.autograd.grad(out, [x_fast, *grn.parameters(), *linear.parameters()], torch.ones_like(out))
    ref_grads = torch.autograd.grad(expected, [x_ref, *grn.parameters(), *linear.parameters()], torch.ones_like(out))
    for fast, ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast, ref)


@pytest.mark.parametrize('training_form', [True, False], ids=['beta, no bias', 'deploy: bias, no beta'])
def test_grn_then_linear_overwriting_its_input_only_without_autograd(training_form):
    grn, linear = random_grn_and_linear(training_form)
    x = torch.randn(3, 4, 6, 12, dtype=torch.float64)
    x[0, :, :, 1] = 0
    expected = linear(grn(x)).detach()
    with torch.no_grad():
        overwritten = x.clone()
        torch.testing.assert_close(grn_then_linear(grn, linear, overwritten, overwrite_input=True), expected)
        assert not torch.equal(overwritten, x)  # the scale was applied in place
    # With autograd recording (parameters that require grad), the input is left alone and gradients flow.
    kept = x.clone()
    out = grn_then_linear(grn, linear, kept, overwrite_input=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(kept, x) and out.requires_grad


def test_conv1x1_runs_onednn_for_small_batches_and_equals_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(4, 6, 1, 1), torch.randn(4)
    x_fast, w_fast, b_fast = (t.clone().requires_grad_() for t in (x, weight, bias))
    x_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, weight, bias))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        out = unireplknet_cpu.conv1x1(x_fast, w_fast, b_fast)
    assert torch.backends.mkldnn.is_available() and any(e.name == 'aten::mkldnn_convolution' for e in profile.events())
    expected = F.conv2d(x_ref, w_ref, b_ref)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(out, [x_fast, w_fast, b_fast], grad),
                               torch.autograd.grad(expected, [x_ref, w_ref, b_ref], grad))
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast casts for F.conv2d, which conv1x1 then uses
        assert unireplknet_cpu.conv1x1(x, weight, bias).dtype == torch.bfloat16


@pytest.mark.parametrize('memory_format', [torch.channels_last, torch.contiguous_format], ids=['NHWC', 'NCHW'])
def test_pointwise_linear_as_conv_equals_the_linear_with_gradients(memory_format):
    torch.manual_seed(0)
    linear = nn.Linear(6, 10).double()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = unireplknet_cpu.pointwise_linear_as_conv(linear, x_fast), linear(x_ref.permute(0, 2, 3, 1))
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous() == (memory_format == torch.channels_last)  # NHWC in, contiguous NHWC out
    grad = torch.randn_like(expected)
    fast_grads = torch.autograd.grad(out, [x_fast, *linear.parameters()], grad)
    ref_grads = torch.autograd.grad(expected, [x_ref, *linear.parameters()], grad)
    for fast, ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast, ref)


@pytest.mark.parametrize('shape', [(3, 700, 1000), (4, 5, 6), (0, 5, 6)], ids=['one sample per chunk', 'one chunk', 'empty'])
def test_per_channel_l2_norm_equals_vector_norm(shape):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(unireplknet_cpu.per_channel_l2_norm(x), torch.linalg.vector_norm(x, dim=1))
    low_precision = x.to(torch.bfloat16)
    # Accumulated in float32 and returned in bfloat16, as vector_norm does.
    torch.testing.assert_close(unireplknet_cpu.per_channel_l2_norm(low_precision),
                               torch.linalg.vector_norm(low_precision, dim=1))


def test_grn_gradient_is_zero_not_nan_for_an_all_zero_channel():
    grn = FastGRN(3).double()
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


TINY = dict(depths=(2, 2, 2, 2), dims=(4, 8, 16, 32), num_classes=5, kernel_sizes=((3, 3), (13, 13), (13, 3), (13, 13)),
            attempt_use_lk_impl=False)


def fast_and_plain_models(**kwargs):
    """The same randomly initialised model with and without unireplknet_cpu (GRN and layer scale made non-trivial,
    so that every part of the block shows in the output)."""
    torch.manual_seed(0)
    fast = unireplknet.UniRepLKNet(**{**TINY, 'layer_scale_init_value': 1.0, **kwargs}, fast_cpu_kernels=True)
    randomise_batch_norms(fast)
    with torch.no_grad():
        for grn in fast.modules():
            if isinstance(grn, GRNwithNHWC):
                grn.gamma.uniform_(-0.5, 0.5)
                grn.beta.uniform_(-0.5, 0.5)
    plain = copy.deepcopy(fast)
    plain.set_fast_cpu_kernels(False)
    return fast, plain


def train_and_eval_outputs(model, x):
    """Outputs in train mode (with a backward pass) and in eval mode without autograd; the gradients by name."""
    train_out = model.train()(x)
    train_out.square().sum().backward()
    with torch.no_grad():
        eval_out = model.eval()(x)
    return [train_out.detach(), eval_out], {name: p.grad for name, p in model.named_parameters()}


def assert_same_outputs_and_gradients(fast, plain, x):
    fast_outputs, fast_grads = train_and_eval_outputs(fast, x)
    plain_outputs, plain_grads = train_and_eval_outputs(plain, x)
    for out, expected in zip(fast_outputs, plain_outputs):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for name, grad in plain_grads.items():  # float32 sums over the batch: compared by norm, not elementwise
        assert (fast_grads[name] - grad).norm() <= 1e-4 * grad.norm() + 1e-5, name  # BN-cancelled grads: ~0


def test_fast_cpu_kernels_convert_modules_and_match_the_plain_model():
    fast, plain = fast_and_plain_models()
    assert fast.fast_cpu_kernels and not plain.fast_cpu_kernels
    assert isinstance(fast.stages[1][0], unireplknet_cpu.FastUniRepLKNetBlock)
    assert type(plain.stages[1][0]) is unireplknet.UniRepLKNetBlock
    assert fast.state_dict().keys() == plain.state_dict().keys()
    layouts = []
    for stage in fast.stages:
        stage.register_forward_hook(
            lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    # float32: in float64, CPU depthwise convs take a slow per-channel path and this test would take ~20 s.
    assert_same_outputs_and_gradients(fast, plain, torch.randn(2, 3, 48, 48))
    assert layouts == [True] * 8  # every stage ran in channels_last


@pytest.mark.parametrize('reparameterized', [False, True], ids=['training form', 'deploy form'])
@pytest.mark.parametrize('chunk_floats', [1, 1 << 20], ids=['one sample per chunk', 'one chunk'])
def test_block_without_autograd_matches_the_plain_block_in_float64(chunk_floats, reparameterized, monkeypatch):
    """The no-autograd path: the MLP a few samples at a time, GELU and GRN's scale in place, the residual added in
    place."""
    monkeypatch.setattr(unireplknet_cpu, 'MLP_CHUNK_FLOATS', chunk_floats)
    torch.manual_seed(0)
    plain = randomise_batch_norms(unireplknet.UniRepLKNetBlock(8, 5, layer_scale_init_value=1.0)).double().eval()
    with torch.no_grad():
        plain.act[1].gamma.uniform_(-0.5, 0.5)
        plain.act[1].beta.uniform_(-0.5, 0.5)
    if reparameterized:
        plain.reparameterize()
    fast = convert_to_fast_cpu(copy.deepcopy(plain))
    assert isinstance(fast, unireplknet_cpu.FastUniRepLKNetBlock)
    x = torch.randn(3, 8, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    calls = []
    mlp = fast._mlp
    monkeypatch.setattr(fast, '_mlp', lambda y: (calls.append(len(y)), mlp(y))[1])
    with torch.no_grad():
        torch.testing.assert_close(fast(x.clone()), plain(x))
    assert calls == ([1, 1, 1] if chunk_floats == 1 else [3])


@pytest.mark.parametrize('momentum', [0.1, None], ids=['momentum 0.1', 'cumulative average'])
def test_block_folding_layer_scale_into_batch_norm_matches_the_plain_block_in_float64(momentum):
    """Training form: pwconv2's BatchNorm with its weight and bias scaled by the layer scale gives the plain block's
    output, gradients and BatchNorm statistics (train and eval mode)."""
    torch.manual_seed(0)
    plain = randomise_batch_norms(unireplknet.UniRepLKNetBlock(8, 5, layer_scale_init_value=0.5)).double()
    plain.pwconv2[2].momentum = momentum
    with torch.no_grad():
        plain.gamma.uniform_(-1, 1)
    fast = convert_to_fast_cpu(copy.deepcopy(plain))
    calls = []
    fold = fast._batch_norm_then_layer_scale
    fast._batch_norm_then_layer_scale = lambda y: (calls.append(1), fold(y))[1]
    x = torch.randn(3, 8, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # twice: the cumulative average's second step divides by num_batches_tracked = 2
        out, expected = fast.train()(x), plain.train()(x)
        torch.testing.assert_close(out, expected)
        grad = torch.randn_like(out)
        params = ['gamma', 'pwconv2.2.weight', 'pwconv2.2.bias', 'pwconv2.0.weight']
        torch.testing.assert_close(torch.autograd.grad(out, [fast.get_parameter(n) for n in params], grad),
                                   torch.autograd.grad(expected, [plain.get_parameter(n) for n in params], grad))
    for name, buffer in plain.pwconv2[2].named_buffers():
        torch.testing.assert_close(fast.pwconv2[2].get_buffer(name), buffer)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x))
    assert len(calls) == 3


def test_fast_paths_are_taken_when_nothing_observes_them(monkeypatch):
    calls = []
    for function in (unireplknet_cpu._GRNThenLinear, unireplknet_cpu._DepthwiseConvCPU, unireplknet_cpu._SpatialL2Norm):
        monkeypatch.setattr(function, 'apply', lambda *args, f=function.apply, name=function.__name__: (
            calls.append(name), f(*args))[1])
    fast, plain = fast_and_plain_models()
    train_and_eval_outputs(fast, torch.randn(2, 3, 48, 48))
    assert {'_GRNThenLinear', '_DepthwiseConvCPU', '_SpatialL2Norm'} <= set(calls)
    calls.clear()
    train_and_eval_outputs(plain, torch.randn(2, 3, 48, 48))
    assert calls == []  # the plain model is the release computation


@pytest.mark.parametrize('fast_cpu_kernels', [True, False], ids=['fast', 'plain'])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_hooks_on_block_modules_fire_and_see_unmodified_tensors(fast_cpu_kernels, mode):
    fast, plain = fast_and_plain_models()
    model = fast if fast_cpu_kernels else plain
    block = model.stages[0][0]  # 12x12 pixels > 4 outputs: where the GRN fold would apply
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = (out, out.detach().clone())
        return hook
    for name in ('pwconv1', 'act', 'pwconv2'):
        getattr(block, name).register_forward_hook(record(name))
    x = torch.randn(2, 3, 48, 48)
    with torch.set_grad_enabled(mode == 'train'):
        out = getattr(model, mode)()(x)
    assert sorted(seen) == ['act', 'pwconv1', 'pwconv2']
    for name, (tensor, copy_at_hook_time) in seen.items():
        assert torch.equal(tensor, copy_at_hook_time), f'{name} output overwritten after its hook ran'
    with torch.no_grad():
        torch.testing.assert_close(out, getattr(plain, mode)()(x), rtol=1e-4, atol=1e-5)


def test_replacing_block_act_takes_effect_with_and_without_fast_kernels():
    fast, plain = fast_and_plain_models()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = plain.eval()(x)
    for model in (fast, plain):
        for block in model.blocks():
            block.act = nn.GELU()  # ablation: no GRN
    assert_same_outputs_and_gradients(fast, plain, x)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x), before)


@pytest.mark.parametrize('change', ['hook', 'bias', 'new conv'])
def test_a_changed_drb_branch_conv_takes_effect_in_training_and_eval(change):
    fast, plain = fast_and_plain_models()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = plain.eval()(x)
    for model in (fast, plain):
        drb = model.stages[1][0].dwconv
        torch.manual_seed(1)
        if change == 'hook':
            drb.dil_conv_k7_2.register_forward_hook(lambda module, args, out: out * 0)  # branch ablated
        elif change == 'bias':
            drb.dil_conv_k7_2.bias = nn.Parameter(torch.rand(8))
        else:
            drb.dil_conv_k7_2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # k3 instead of k7 r2
    assert_same_outputs_and_gradients(fast, plain, x)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x), before)


def test_model_trains_under_cpu_bfloat16_autocast_close_to_float32():
    """The custom autograd paths (DRB convs, GRN norm and fold) keep autocast's dtypes in forward and backward, and
    their bfloat16 gradients are as close to float32 as the plain computation's in bfloat16 (the release's): the bound
    is that computation's own error on this machine, not a number tuned to one CPU."""
    def gradients(autocast, fast_cpu_kernels=True):
        torch.manual_seed(0)
        model = unireplknet.UniRepLKNet(depths=(2, 2, 2, 2), dims=(8, 16, 32, 64), num_classes=5,
                                        kernel_sizes=((3, 3), (13, 13), (13, 3), (13, 13)), layer_scale_init_value=1.0,
                                        fast_cpu_kernels=fast_cpu_kernels)
        x, labels = torch.randn(4, 3, 96, 96), torch.randint(0, 5, (4,))
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        F.cross_entropy(logits.float(), labels).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    low, plain_low, full = gradients(True), gradients(True, fast_cpu_kernels=False), gradients(False, False)
    for name, grad in full.items():
        assert low[name].dtype == torch.float32 and torch.isfinite(low[name]).all(), name
        if grad.norm() > 1e-4 * grad.numel() ** 0.5:  # BN-cancelled parameters have ~0 gradient: nothing to compare
            # Measured: the fast path's error is at most 1.07 times the plain path's (up to 0.26 relative, on the SE
            # bias of the last block); a few bfloat16 roundings of slack.
            plain_error = (plain_low[name] - grad).norm()
            assert (low[name] - grad).norm() <= plain_error + 4 * BFLOAT16_EPS * grad.norm(), name


def test_fast_cpu_kernels_chosen_by_argument_then_environment_then_auto(monkeypatch):
    def built(**kwargs):
        return unireplknet.UniRepLKNet(depths=(1, 1, 1, 1), dims=(4, 8, 16, 32), kernel_sizes=((3,), (13,), (3,), (3,)),
                                       num_classes=2, **kwargs).fast_cpu_kernels
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.delenv('UNIREPLKNET_FAST_CPU', raising=False)
    assert built() is True  # auto: no GPU, module present
    monkeypatch.setenv('UNIREPLKNET_FAST_CPU', '0')
    assert built() is False and built(fast_cpu_kernels=True) is True
    monkeypatch.setenv('UNIREPLKNET_FAST_CPU', 'yes')
    with pytest.raises(ValueError, match='UNIREPLKNET_FAST_CPU must be 0 or 1'):
        built()
    monkeypatch.delenv('UNIREPLKNET_FAST_CPU')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert built() is False  # auto on a GPU machine: the release computation


def test_without_the_cpu_module_the_model_is_plain_or_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'unireplknet_cpu', None)  # import fails as if the file were absent
    monkeypatch.delenv('UNIREPLKNET_FAST_CPU', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    model = unireplknet.UniRepLKNet(**TINY)
    assert model.fast_cpu_kernels is False and type(model.stages[1][0]) is unireplknet.UniRepLKNetBlock
    with pytest.raises(ImportError, match='unireplknet_cpu.py next to unireplknet.py'):
        unireplknet.UniRepLKNet(**TINY, fast_cpu_kernels=True)
