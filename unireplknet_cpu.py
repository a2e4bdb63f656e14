"""Optional CPU speed-ups for unireplknet.py: the same function, computed faster on CPU (BENCHMARKS.md).

`unireplknet.py` alone runs the release's computation on every device; this module is imported by it with a
fallback, and used when a model is built with `fast_cpu_kernels=True` (default: auto, i.e. on where no GPU is
visible; environment override `UNIREPLKNET_FAST_CPU=0/1`). Same state_dict, same values up to float rounding
(tests/test_unireplknet_fast_paths.py checks each path against the plain one in float64).

Design: `convert_to_fast_cpu(model)` swaps the class of specific submodules to a subclass defined here. The
subclasses add no parameters, buffers or submodules, so the swap is a `__class__` assignment: state_dict, parameter
identity (optimizers), hooks and `isinstance` checks are untouched, and `convert_to_fast_cpu(model, False)` undoes
it. Because the fast code lives in the swapped modules, a researcher's change wins automatically: a module replaced
by the user (`block.act = nn.GELU()`, a new conv in a DRB) is simply not a fast module. The two fast paths that span
several modules (the GRN fold into the next Linear and in-place inference ops in `FastUniRepLKNetBlock`, the fused
eval-mode conv of `FastDilatedReparamBlock`) first check, once per forward and cheaply, that the modules they fuse
are the expected types and carry no hooks; otherwise the plain forward runs, so hooks fire and receive tensors that
nothing overwrites afterwards.

The fast paths (measured gains in BENCHMARKS.md, "Ideas kept and dropped"):
  * channels_last from the stem on (`ChannelsLastStemConv2d`): oneDNN's depthwise convs are several times faster in
    channels_last, and the NCHW <-> NHWC permutes around the Linear layers become free views;
  * the DRB's large and dilated depthwise convs in training (`FastDepthwiseConv2d`, `same_depthwise_conv`): a custom
    backward that avoids oneDNN's slow kernels (the weight gradient by a small C++ kernel compiled on first use, or
    as one grouped forward conv where no compiler is found; on machines without AVX-512, dilated convs padded by
    more than 4 with the padding written out first);
  * on AVX-512 machines, 13x13 depthwise convs over 64 or more channels (training, eval and deploy form) as 15x15
    ones with a zero ring, which oneDNN runs 2.3-3x faster (`same_depthwise_conv_forward`);
  * an eval-mode training-form DRB as one conv with its fused kernel (`FastDilatedReparamBlock`);
  * GRN's norm in cache-sized chunks with a one-pass backward (`FastGRN`); with autograd, GRN's scale folded into the
    following Linear where a sample has at least 4x more pixels than that Linear has outputs (`grn_then_linear`);
  * the block's Linears as 1x1 convs (`pointwise_linear_as_conv`): oneDNN fuses the bias, addmm does not, and on
    AVX-512 its 1x1 conv is 2-3x faster than addmm;
  * without autograd, the block's MLP a few samples at a time (GRN is per sample, so the 4C-channel tensor stays
    small and is not page-faulted afresh), GELU, GRN's scale and the residual add written in place
    (`FastUniRepLKNetBlock`);
  * the layer scale folded into the BatchNorm before it (`FastUniRepLKNetBlock._batch_norm_then_layer_scale`).

For tracing or export (ONNX, TorchScript) build the model with fast_cpu_kernels=False: the chunked GRN norm splits
the batch into Python-counted chunks, which a trace would freeze at the example's batch size.
"""
import functools
import logging
import os
import re
import shutil
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as module_hooks

import unireplknet
from unireplknet import DilatedReparamBlock, GRNwithNHWC, UniRepLKNetBlock, grn_response_scale

_logger = logging.getLogger(__name__)

__all__ = ['convert_to_fast_cpu', 'same_depthwise_conv', 'same_depthwise_conv_forward',
           'dilated_depthwise_conv_padded_first', 'grn_then_linear',
           'per_channel_l2_norm', 'pointwise_linear_as_conv', 'conv1x1']


# --------------------------------------------------------------------------------------------------------------------
# Depthwise convs: custom backward, explicit padding for dilated convs
# --------------------------------------------------------------------------------------------------------------------

# oneDNN's dilated depthwise conv is fast at any padding on AVX-512 machines; on AVX2 ones, padded by more than 4 it
# takes a path 10-35x slower, which writing the zero padding out first avoids (BENCHMARKS.md, both machine classes).
ONEDNN_DILATED_CONV_FAST_AT_ANY_PADDING = torch.backends.cpu.get_cpu_capability().startswith('AVX512')
# oneDNN's AVX-512 depthwise kernel (brdgmm_dw) runs a 13x13 kernel over 64 or more channels 2.3-3x slower than a
# 15x15 one, in float32 and bfloat16, at any batch, on 1 and 2 threads (fewer channels: 13x13 is the faster; AVX2
# machines: 13x13 is the faster). A zero ring around the kernel adds only zero products.
ONEDNN_13X13_DEPTHWISE_FASTER_AS_15X15 = ONEDNN_DILATED_CONV_FAST_AT_ANY_PADDING


def dilated_depthwise_conv_padded_first(x: torch.Tensor, weight: torch.Tensor, dilation: int, bias=None
                                        ) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C) for a (C, 1, k, k)
    kernel, with the zero padding written out by F.pad so that oneDNN runs its unpadded dilated kernel. Keeps x's
    layout."""
    padding = dilation * (weight.shape[-1] - 1) // 2
    return F.conv2d(F.pad(x, (padding,) * 4), weight, bias, dilation=dilation, groups=x.shape[1])


def same_depthwise_conv_forward(x: torch.Tensor, weight: torch.Tensor, bias=None, dilation: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C), a stride-1 'same'
    depthwise conv, by the fastest CPU computation measured on this machine class (no custom backward)."""
    kernel_size = weight.shape[-1]
    padding = dilation * (kernel_size - 1) // 2
    if dilation > 1 and padding > 4 and not ONEDNN_DILATED_CONV_FAST_AT_ANY_PADDING:
        return dilated_depthwise_conv_padded_first(x, weight, dilation, bias)
    if (ONEDNN_13X13_DEPTHWISE_FASTER_AS_15X15 and dilation == 1 and kernel_size == 13 and x.shape[1] >= 64
            and x.dtype in (torch.float32, torch.bfloat16) and x.device.type == 'cpu'):
        weight, padding = F.pad(weight, (1, 1, 1, 1)), padding + 1
    return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])


def depthwise_conv_weight_grad_by_batch_folding(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int,
                                                dilation: int) -> torch.Tensor:
    """Weight gradient of a stride-1 'same' depthwise conv, computed as one forward conv.

    grad_w[c, u, v] = sum_{n, h, w} x_padded[n, c, h + r u, w + r v] * grad_out[n, c, h, w] is a strided correlation
    of each (sample, channel) image with its own output gradient: a grouped conv with N * C groups whose kernel is
    grad_out, summed over the batch. oneDNN runs this 1.5-6x faster than its depthwise backward-weights kernel for
    large or dilated kernels (5-10x when the kernel is larger than the feature map). (C, 1, k, k), x's dtype.
    """
    batch, channels, height, width = x.shape
    padding = dilation * (kernel_size - 1) // 2
    # Padded beforehand (oneDNN's own padding is several times slower for this conv), written straight into the
    # (1, B * C, H', W') layout the grouped conv needs: one copy of a channels_last x where F.pad + reshape make two.
    padded = x.new_zeros(1, batch * channels, height + 2 * padding, width + 2 * padding)
    padded.view(batch, channels, height + 2 * padding, width + 2 * padding)[
        :, :, padding:padding + height, padding:padding + width].copy_(x)
    per_sample = F.conv2d(padded, grad_out.reshape(batch * channels, 1, height, width), stride=dilation,
                          groups=batch * channels)
    return per_sample.reshape(batch, channels, kernel_size, kernel_size).sum(0).unsqueeze(1)


# The weight gradient written out for CPUs, compiled on first use. oneDNN's own depthwise backward-weights kernel and
# the batch folding above both run far below the FMA rate at these shapes (a 7x7 kernel dilated by 2 over 80
# channels at 28x28: 8-19 ms for 98 M multiply-adds); no library offers a better one. This kernel keeps, for a block
# of 16 channels of a channels_last image, the sums of up to 8 taps of a kernel row in registers while it walks each
# image row once: at the DRB's shapes mostly 1.5-6x faster than oneDNN and the batch folding (BENCHMARKS.md,
# micro_dwconv.py's weight-gradient rows). Sums run over fixed blocks of 8 samples, so the result does not depend on
# the thread count.
_WEIGHT_GRAD_SOURCE = r"""
#include <ATen/Parallel.h>
// Taps summed in one pass over a row: 8 sums of 16 floats fill 8 of AVX-512's 32 registers, but all 16 of AVX2's.
#ifdef __AVX512F__
#define MAX_GROUP 8
#else
#define MAX_GROUP 4
#endif
constexpr int kMaxGroup = MAX_GROUP;

// acc[g] += sum_w x[w + s0 + r g] * dy[w] (B channels each) for G taps of one kernel row: x and dy are one row of a
// channels_last image (channel stride 1, pixel stride C), zero outside [0, W).
template <typename T, int B, int G>
static inline void tap_group(T* acc_out, const T* xrow, const T* drow, int64_t W, int64_t C, int64_t r, int64_t s0) {
  const int64_t lo = std::min<int64_t>(W, std::max<int64_t>(0, -s0));  // [lo, hi): every tap inside the row
  const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(W, W - (s0 + r * (G - 1))));
  T acc[G][B];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < B; ++j) acc[g][j] = acc_out[g * B + j];
  auto edge = [&](int64_t w) {
    for (int g = 0; g < G; ++g) {
      const int64_t wx = w + s0 + r * g;
      if (wx < 0 || wx >= W) continue;
      for (int j = 0; j < B; ++j) acc[g][j] += xrow[wx * C + j] * drow[w * C + j];
    }
  };
  for (int64_t w = 0; w < lo; ++w) edge(w);
  for (int64_t w = lo; w < hi; ++w) {
    const T* dp = drow + w * C;
    const T* xp = xrow + (w + s0) * C;
    for (int g = 0; g < G; ++g) {
#pragma omp simd
      for (int j = 0; j < B; ++j) acc[g][j] += xp[g * r * C + j] * dp[j];
    }
  }
  for (int64_t w = hi; w < W; ++w) edge(w);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < B; ++j) acc_out[g * B + j] = acc[g][j];
}

// acc[(u k + v) B + j] += sum over samples [n0, n1) of the gradient of tap (u, v), channel c0 + j.
template <typename T, int B>
static void channel_block(T* acc, const T* x, const T* dy, int64_t n0, int64_t n1, int64_t C, int64_t H, int64_t W,
                          int64_t k, int64_t r, int64_t c0) {
  const int64_t p = r * (k - 1) / 2;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      const T* drow = dy + ((n * H + h) * W) * C + c0;
      for (int64_t u = 0; u < k; ++u) {
        const int64_t hx = h + r * u - p;
        if (hx < 0 || hx >= H) continue;
        const T* xrow = x + ((n * H + hx) * W) * C + c0;
        T* acc_row = acc + u * k * B;
        int64_t v = 0;
        for (; v + kMaxGroup <= k; v += kMaxGroup)
          tap_group<T, B, kMaxGroup>(acc_row + v * B, xrow, drow, W, C, r, r * v - p);
        // The remaining k % kMaxGroup taps in one group: each group is one pass over the row, whose G sums are
        // independent FMA chains (a lone tap would wait out the FMA latency at every pixel).
        switch (k - v) {
          case 1: tap_group<T, B, 1>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
          case 2: tap_group<T, B, 2>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
          case 3: tap_group<T, B, 3>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
#if MAX_GROUP > 4
          case 4: tap_group<T, B, 4>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
          case 5: tap_group<T, B, 5>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
          case 6: tap_group<T, B, 6>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
          case 7: tap_group<T, B, 7>(acc_row + v * B, xrow, drow, W, C, r, r * v - p); break;
#endif
          default: break;
        }
      }
    }
  }
}

constexpr int64_t kBlock = 16, kSamplesPerItem = 8;

// grad_w[c, 0, u, v] = sum_{n,h,w} x[n, c, h + r u - p, w + r v - p] * dy[n, c, h, w], p = r (k - 1) / 2, zero
// padding: the weight gradient of a stride-1 'same' depthwise conv; x, dy (N, C, H, W), any layout.
torch::Tensor depthwise_weight_grad(torch::Tensor x, torch::Tensor dy, int64_t k, int64_t r) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // (N, H, W, C'), no copy for a channels_last x whose C is a multiple of 16; otherwise zero channels up to one.
  const int64_t Cp = (C + kBlock - 1) / kBlock * kBlock;
  auto channels_last_rows = [&](const torch::Tensor& t) {
    auto rows = t.permute({0, 2, 3, 1});
    return (Cp == C ? rows : at::constant_pad_nd(rows, {0, Cp - C})).contiguous();
  };
  auto xl = channels_last_rows(x), dl = channels_last_rows(dy);
  const int64_t blocks = Cp / kBlock, chunks = (N + kSamplesPerItem - 1) / kSamplesPerItem;
  auto partial = torch::zeros({chunks, blocks, k * k, kBlock}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_weight_grad", [&] {
    const scalar_t* xp = xl.data_ptr<scalar_t>();
    const scalar_t* dp = dl.data_ptr<scalar_t>();
    scalar_t* pp = partial.data_ptr<scalar_t>();
    at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n0 = (item / blocks) * kSamplesPerItem, n1 = std::min(N, n0 + kSamplesPerItem);
        channel_block<scalar_t, kBlock>(pp + item * k * k * kBlock, xp, dp, n0, n1, Cp, H, W, k, r,
                                        (item % blocks) * kBlock);
      }
    });
  });
  // (chunks, blocks, k k, 16) -> (C, 1, k, k)
  auto summed = partial.sum(0).permute({0, 2, 1}).reshape({Cp, k, k}).narrow(0, 0, C);
  return summed.unsqueeze(1).contiguous();
}"""

# Compiler flags per ATen CPU capability, so that a kernel built on one machine class never runs on an older one
# through a shared cache (the capability is part of the extension's name).
_CAPABILITY_FLAGS = {'AVX512': ['-mavx512f', '-mavx512vl', '-mfma'], 'AVX2': ['-mavx2', '-mfma']}


def _import_load_inline():
    """torch.utils.cpp_extension.load_inline, imported without the warning that module logs on a CPU-only machine
    with a CUDA toolkit ("No CUDA runtime is found"), irrelevant to a CPU kernel."""
    extension_logger = logging.getLogger('torch.utils.cpp_extension')
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load_inline
    finally:
        extension_logger.setLevel(level)
    return load_inline


@functools.lru_cache(maxsize=None)
def compiled_weight_grad_kernel():
    """The compiled `depthwise_weight_grad(x, dy, k, r)`, built on first use (about 25 s, then cached by
    torch.utils.cpp_extension), or None where it is turned off (`UNIREPLKNET_CPU_EXTENSION=0`) or cannot be built
    (no C++ compiler or ninja): then the batch folding runs, with a warning saying why."""
    if os.environ.get('UNIREPLKNET_CPU_EXTENSION', '1') == '0':
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    name = re.sub(r'\W', '_', f'unireplknet_cpu_{capability}_torch{torch.__version__}')
    _logger.info(f'Loading the CPU weight-gradient kernel {name} (compiled once per machine class and torch version, '
                 'about 25 s; UNIREPLKNET_CPU_EXTENSION=0 skips it).')
    path = os.environ.get('PATH', '')
    try:
        if shutil.which('ninja') is None:  # the pip package's binary, where its venv is used without activating it
            import ninja
            os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + path
        load_inline = _import_load_inline()
        return load_inline(name, _WEIGHT_GRAD_SOURCE, functions=['depthwise_weight_grad'],
                           extra_cflags=['-O3', '-fopenmp-simd'] + _CAPABILITY_FLAGS.get(capability, []))
    except Exception as error:  # any build failure: the kernel is optional, the batch folding computes the same
        warnings.warn(f'unireplknet_cpu: could not build the CPU weight-gradient kernel ({type(error).__name__}: '
                      f'{str(error)[:300]}); using the slower batch folding. Install a C++ compiler and ninja, or '
                      'set UNIREPLKNET_CPU_EXTENSION=0 to silence this.')
        return None
    finally:
        os.environ['PATH'] = path


def depthwise_conv_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, dilation: int
                               ) -> torch.Tensor:
    """Weight gradient (C, 1, k, k) of a stride-1 'same' depthwise conv: by the compiled kernel for float32 and
    float64 CPU tensors where it is built (not under torch.compile, whose fake tensors it cannot run), else by
    batch folding (also for bfloat16 or autocast's mixed dtypes)."""
    if (x.dtype == grad_out.dtype in (torch.float32, torch.float64) and x.device.type == 'cpu'
            and not torch.compiler.is_compiling()):
        kernel = compiled_weight_grad_kernel()
        if kernel is not None:
            return kernel.depthwise_weight_grad(x, grad_out, kernel_size, dilation)
    return depthwise_conv_weight_grad_by_batch_folding(x, grad_out, kernel_size, dilation)


class _DepthwiseConvCPU(torch.autograd.Function):
    """Stride-1 'same' depthwise conv without bias whose backward uses the fastest CPU computations measured.

    The input gradient of a 'same' conv is the same conv of the output gradient with the flipped kernel; the weight
    gradient comes from `depthwise_conv_weight_grad`. First-order gradients only.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x, weight, dilation):
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return same_depthwise_conv_forward(x, weight, dilation=dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = same_depthwise_conv_forward(grad_out, weight.flip(-2, -1), dilation=ctx.dilation)
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_conv_weight_grad(x, grad_out, weight.shape[-1], ctx.dilation)
        return grad_x, grad_weight, None


def same_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C) for a (C, 1, k, k) kernel:
    dilated kernels and undilated ones larger than 3x3 through `_DepthwiseConvCPU`, 3x3 ones through F.conv2d."""
    if dilation > 1 or weight.shape[-1] > 3:
        return _DepthwiseConvCPU.apply(x, weight, dilation)
    return F.conv2d(x, weight, padding=dilation * (weight.shape[-1] - 1) // 2, dilation=dilation, groups=x.shape[1])


def _is_same_depthwise_conv(conv: nn.Module) -> bool:
    """Whether `conv` is an nn.Conv2d computing a stride-1 'same' depthwise conv with a square kernel (the only case
    the fast paths reproduce)."""
    if not isinstance(conv, nn.Conv2d) or type(conv).forward not in (nn.Conv2d.forward, FastDepthwiseConv2d.forward):
        return False
    k, r = conv.kernel_size[0], conv.dilation[0]
    return (conv.kernel_size == (k, k) and conv.dilation == (r, r) and conv.stride == (1, 1)
            and conv.padding == (r * (k - 1) // 2,) * 2 and conv.padding_mode == 'zeros'
            and conv.groups == conv.in_channels == conv.out_channels)


class FastDepthwiseConv2d(nn.Conv2d):
    """A DRB conv whose training forward and backward avoid oneDNN's slow cases (`same_depthwise_conv`); with a bias
    (the deploy form's conv) only the forward does (`same_depthwise_conv_forward`); a conv given other settings runs
    as nn.Conv2d."""

    def forward(self, x):
        if not _is_same_depthwise_conv(self):
            return super().forward(x)
        if self.bias is None:
            return same_depthwise_conv(x, self.weight, self.dilation[0])
        return same_depthwise_conv_forward(x, self.weight, self.bias, self.dilation[0])


class ChannelsLastStemConv2d(nn.Conv2d):
    """The stem's first conv with its input in channels_last, so the whole network after it runs in that layout."""

    def forward(self, x):
        return super().forward(x.contiguous(memory_format=torch.channels_last))


# --------------------------------------------------------------------------------------------------------------------
# GRN: chunked norm with one-pass backward, fold into the next Linear
# --------------------------------------------------------------------------------------------------------------------

def per_channel_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """torch.linalg.vector_norm(x, dim=1) for (B, L, C) x: each sample's and channel's L2 norm over L, as (B, C).

    Computed as sqrt(sum of squares) a few samples at a time, so the squares stay in cache: on CPU 3-7x faster than
    vector_norm, whose reduction over a non-innermost dim is slow. Accumulates in float32 or wider and returns x's
    dtype, as vector_norm does.
    """
    batch, length, channels = x.shape
    if batch == 0:
        return x.new_zeros(0, channels)
    samples_per_chunk = max(1, (1 << 21) // max(1, length * channels))  # ~8 MB of float32 squares per chunk
    accumulate = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    sums = [chunk.to(accumulate).square().sum(dim=1) for chunk in x.split(samples_per_chunk)]
    return (torch.cat(sums) if len(sums) > 1 else sums[0]).sqrt().to(x.dtype)


def _l2_norm_gradient(x: torch.Tensor, norm: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of an L2 norm with respect to x in one pass: x * (grad / norm), 0 where the norm is 0 (as torch
    defines it). norm and grad broadcast against x."""
    return x * torch.where(norm > 0, grad / norm, torch.zeros_like(grad))


class _SpatialL2Norm(torch.autograd.Function):
    """torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) for (B, H, W, C) x, with a one-pass backward (autograd's
    makes three passes over x: divide, multiply, mask)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x):
        batch, height, width, channels = x.shape
        norm = per_channel_l2_norm(x.reshape(batch, height * width, channels)).reshape(batch, 1, 1, channels)
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad):
        x, norm = ctx.saved_tensors
        return _l2_norm_gradient(x, norm, grad)


class FastGRN(GRNwithNHWC):
    """GRN whose spatial norm is computed in chunks with a one-pass backward (`_SpatialL2Norm`)."""

    def global_response(self, x):
        return _SpatialL2Norm.apply(x)


def _grn_folded_bias(beta, weight, bias):
    """The bias W @ beta + b (O,) of linear(grn(x)) when GRN's beta is moved behind the Linear."""
    folded_bias = weight.new_zeros(weight.shape[0]) if bias is None else bias
    return folded_bias if beta is None else folded_bias + weight @ beta.reshape(-1)


def _grn_folded_weight_and_bias(norm, gamma, beta, weight, bias):
    """Per-sample weight W * s (B, O, C) and shared bias W @ beta + b (O,) of linear(grn(x)), from x's (B, C) norms."""
    scale = grn_response_scale(norm, gamma.reshape(1, -1))
    return weight.unsqueeze(0) * scale.unsqueeze(1), _grn_folded_bias(beta, weight, bias)


class _GRNThenLinear(torch.autograd.Function):
    """linear(grn(x)) for (B, L, C) x as one batched matmul with per-sample weights; see grn_then_linear.

    The backward also makes one pass less than autograd would: the norm's gradient x * (grad / norm) is the `input`
    of the baddbmm that computes grad @ (W * s), instead of a separate tensor added afterwards.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x, gamma, beta, weight, bias):
        norm = per_channel_l2_norm(x)
        folded_weight, folded_bias = _grn_folded_weight_and_bias(norm, gamma, beta, weight, bias)
        ctx.save_for_backward(x, norm, gamma, beta, weight, bias)
        return torch.baddbmm(folded_bias.reshape(1, 1, -1), x, folded_weight.transpose(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad_out):
        x, norm, *small = ctx.saved_tensors
        # The small tensors' gradients come from autograd on the fold itself; only x-sized work is written out.
        inputs = [t.detach().requires_grad_() if t is not None else None for t in (norm, *small)]
        with torch.enable_grad():
            folded_weight, folded_bias = _grn_folded_weight_and_bias(*inputs)
        grad_folded_weight = torch.bmm(grad_out.transpose(1, 2), x)
        leaves = [t for t in inputs if t is not None]
        leaf_grads = iter(torch.autograd.grad((folded_weight, folded_bias), leaves,
                                              (grad_folded_weight, grad_out.sum(dim=(0, 1))), allow_unused=True))
        grad_norm, grad_gamma, grad_beta, grad_weight, grad_bias = [
            next(leaf_grads) if t is not None else None for t in inputs]
        norm_term = _l2_norm_gradient(x, norm.unsqueeze(1), grad_norm.unsqueeze(1))
        # In place, so in one dtype: grad_out's (bfloat16 under autocast, as the forward's matmul ran).
        grad_x = norm_term.to(grad_out.dtype).baddbmm_(grad_out, folded_weight.detach().to(grad_out.dtype))
        return grad_x, grad_gamma, grad_beta, grad_weight, grad_bias


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """F.conv2d(x, weight, bias) for an (O, C, 1, 1) weight, through oneDNN also for fewer than 16 samples on one
    thread, which F.conv2d sends to ATen's slower native kernel by a heuristic (2.2x slower for the chunked MLP's 2-8
    samples on the AVX512 machine, BENCHMARKS.md). Eager float32 outside autocast only; anything else, and
    torch.compile (whose fake tensors the oneDNN op does not take), goes through F.conv2d."""
    if (x.dtype == weight.dtype == torch.float32 and x.device.type == 'cpu' and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling()):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0, 0], [1, 1], [1, 1], 1)
    return F.conv2d(x, weight, bias)


def pointwise_linear_as_conv(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x.permute(0, 2, 3, 1)) for (B, C, H, W) x, computed as a 1x1 conv: oneDNN writes the bias with the
    product (nn.Linear's addmm first fills the whole output with the broadcast bias, one more pass over the block's
    largest tensor) and runs 1.2-2x faster forward and backward on CPU (BENCHMARKS.md). For channels_last x the
    result is a contiguous (B, H, W, O) tensor, as the Linear's. (B, C, H, W) -> (B, H, W, O)."""
    return conv1x1(x, linear.weight[:, :, None, None], linear.bias).permute(0, 2, 3, 1)


def _records_autograd(*tensors) -> bool:
    """Whether autograd would record an op on these tensors (None entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _grn_then_linear_in_place(grn: GRNwithNHWC, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(grn(x)) without autograd, scaling x in place: GRN's per-sample scale is one pass over x, its beta is
    folded into the bias, and the Linear runs as a 1x1 conv (`pointwise_linear_as_conv`). Overwrites x."""
    batch, height, width, channels = x.shape
    norm = per_channel_l2_norm(x.reshape(batch, height * width, channels)).reshape(batch, 1, 1, channels)
    x.mul_(grn_response_scale(norm, grn.gamma))
    bias = _grn_folded_bias(grn.beta, linear.weight, linear.bias)
    return conv1x1(x.permute(0, 3, 1, 2), linear.weight[:, :, None, None], bias).permute(0, 2, 3, 1)


def grn_then_linear(grn: GRNwithNHWC, linear: nn.Linear, x: torch.Tensor, overwrite_input: bool = False
                    ) -> torch.Tensor:
    """linear(grn(x)) for NHWC x by the fastest CPU computation measured for its shape (BENCHMARKS.md).

    Without autograd and with `overwrite_input`: x scaled in place, then the Linear as a 1x1 conv
    (`_grn_then_linear_in_place`). With autograd, where a sample has at least 4x more pixels than the Linear has
    outputs (at 224: stages 0-1): GRN's per-sample scale folded into a per-sample copy of the Linear weight,
    (x * s + beta) @ W.T + b == x @ (W * s).T + (W @ beta + b), one batched matmul instead of writing out the scaled
    4C-channel tensor, the block's largest (`_GRNThenLinear`). Elsewhere the per-sample weights cost more than they
    save: GRN, then the Linear as a 1x1 conv. (B, H, W, 4C) -> (B, H, W, C).
    """
    batch, height, width, channels = x.shape
    if overwrite_input and not _records_autograd(x, grn.gamma, grn.beta, linear.weight, linear.bias):
        return _grn_then_linear_in_place(grn, linear, x)
    if height * width < 4 * linear.out_features:
        return pointwise_linear_as_conv(linear, grn(x).permute(0, 3, 1, 2))
    out = _GRNThenLinear.apply(x.reshape(batch, height * width, channels), grn.gamma, grn.beta, linear.weight,
                               linear.bias)
    return out.reshape(batch, height, width, linear.out_features)


# --------------------------------------------------------------------------------------------------------------------
# Fast blocks: fused paths where nothing observes or replaces the fused modules
# --------------------------------------------------------------------------------------------------------------------

def _unobserved(modules) -> bool:
    """No forward or backward hook, on these modules or registered globally, would miss a fused call."""
    if (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
            or module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in modules)


def _has_types(sequential: nn.Module, types) -> bool:
    return type(sequential) is nn.Sequential and len(sequential) == len(types) and all(
        type(layer) in allowed for layer, allowed in zip(sequential, types))


_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_PLAIN_DRB_CONVS = (nn.Conv2d, FastDepthwiseConv2d)


class FastDilatedReparamBlock(DilatedReparamBlock):
    """In eval mode, a training-form DRB runs as the one conv that reparameterisation would store (every BN is a
    fixed affine map there): one K x K conv instead of 1 + len(branches) convs, BNs and adds. Gradients still reach
    every branch through the fused kernel (ERF maps are computed in eval mode)."""

    def forward(self, x):
        if self.training or self.deploy or not self._fusable():
            return super().forward(x)
        kernel, bias = self.get_kernel_bias()
        return same_depthwise_conv_forward(x, kernel, bias)

    def _fusable(self) -> bool:
        shapes = [(self.kernel_size, 1)] + list(self.branches)
        convs = [self.lk_origin] + [getattr(self, f'dil_conv_k{k}_{r}') for k, r in self.branches]
        norms = [self.origin_bn] + [getattr(self, f'dil_bn_k{k}_{r}') for k, r in self.branches]
        return (all(type(c) in _PLAIN_DRB_CONVS and _is_same_depthwise_conv(c)
                    and (c.kernel_size[0], c.dilation[0]) == shape for c, shape in zip(convs, shapes))
                and all(type(n) in _BATCH_NORMS and not n.training for n in norms)
                and _unobserved(convs + norms))


# Without autograd the block's MLP runs on this many floats of its 4C-channel tensor at a time (4 MB: deployed eval
# 1.17-1.28x with glibc's default malloc, which page-faults every fresh tensor over 32 MB; 1.05x without faults).
MLP_CHUNK_FLOATS = 1 << 20


def _gelu_in_place_without_autograd(gelu: nn.GELU, x: torch.Tensor) -> torch.Tensor:
    """gelu(x), written over x when no gradient will flow through it (GELU's backward needs x)."""
    return gelu(x) if x.requires_grad else torch.ops.aten.gelu_(x, approximate=gelu.approximate)


class FastUniRepLKNetBlock(UniRepLKNetBlock):
    """The block with its Linears as 1x1 convs (`pointwise_linear_as_conv`, `grn_then_linear`) and, without autograd,
    the MLP a few samples at a time with GELU, GRN's scale and the residual add written over fresh tensors (saves
    allocating and first-touching the block's largest tensors).

    Runs the plain forward whenever pwconv1, act, pwconv2 or drop_path are not the modules the block was built with
    or carry hooks: the fused path would skip those calls or overwrite the tensors a hook received.
    """

    def residual_forward(self, x):
        if not self._fusable():
            return super().residual_forward(x)
        y = self.se(self.norm(self.dwconv(x)))
        if _records_autograd(y, *self.pwconv1.parameters(), *self.act.parameters(), *self.pwconv2[0].parameters()):
            y = self._mlp(y)
        else:  # GRN is per sample: a few samples at a time, the 4C-channel tensor stays small and in cache
            samples = max(1, MLP_CHUNK_FLOATS // (y[0].numel() * self.pwconv1[1].out_features // y.shape[1]))
            y = torch.cat([self._mlp(chunk) for chunk in y.split(samples)]) if samples < len(y) else self._mlp(y)
        y = self.pwconv2[1](y)  # NHWC -> NCHW
        y = self.drop_path(self._batch_norm_then_layer_scale(y))
        return x + y if y.requires_grad else y.add_(x)

    def _batch_norm_then_layer_scale(self, y):
        """layer_scale(pwconv2's BatchNorm(y)) (training form), as the BatchNorm with weight and bias scaled by the
        layer scale: BN(y) * g == (y - mean) / std * (w * g) + b * g. One pass over y instead of two, and one tensor
        less kept for the backward. The BatchNorm's own forward runs (statistics, momentum, train/eval), with the
        scaled parameters substituted; gradients reach w, b and g through the products. Not under autocast, whose
        bfloat16 BatchNorm output is rounded before the plain path's float32 scaling."""
        norm = self.pwconv2[2] if len(self.pwconv2) == 3 else None
        if (norm is None or self.gamma is None or norm.weight is None or norm.bias is None
                or torch.is_autocast_enabled('cpu')):
            return self.layer_scale(y if norm is None else norm(y))
        scaled = {'weight': norm.weight * self.gamma, 'bias': norm.bias * self.gamma}
        return torch.func.functional_call(norm, scaled, (y,))

    def _mlp(self, y):
        """pwconv1 -> GELU -> GRN -> pwconv2's Linear, (B, C, H, W) -> (B, H, W, C); without autograd in place."""
        gelu, grn = self.act
        y = pointwise_linear_as_conv(self.pwconv1[1], y)  # pwconv1 = NCHW -> NHWC, then Linear
        y = _gelu_in_place_without_autograd(gelu, y)
        return grn_then_linear(grn, self.pwconv2[0], y, overwrite_input=not y.requires_grad)

    def _fusable(self) -> bool:
        pwconv2_types = [(nn.Linear,), (unireplknet.NHWCtoNCHW,)] + [_BATCH_NORMS] * (len(self.pwconv2) == 3)
        return (_has_types(self.pwconv1, [(unireplknet.NCHWtoNHWC,), (nn.Linear,)])
                and _has_types(self.act, [(nn.GELU,), (GRNwithNHWC, FastGRN)])
                and _has_types(self.pwconv2, pwconv2_types)
                and type(self.drop_path) in (nn.Identity, unireplknet.DropPath)
                and _unobserved([self.pwconv1, *self.pwconv1, self.act, *self.act, self.pwconv2, *self.pwconv2,
                                 self.drop_path]))


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------

# plain class -> fast subclass, for the modules of a UniRepLKNet built by unireplknet.py
_FAST_CLASSES = {
    DilatedReparamBlock: FastDilatedReparamBlock,
    GRNwithNHWC: FastGRN,
    UniRepLKNetBlock: FastUniRepLKNetBlock,
}


def convert_to_fast_cpu(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap the classes of the submodules of a UniRepLKNet (or of any module holding its blocks) to their fast CPU
    subclasses in place (enable=False: back). UniRepLKNet.set_fast_cpu_kernels calls this.

    Only modules of exactly the plain class are converted; anything a user replaced is left alone.
    """
    to_class = _FAST_CLASSES if enable else {fast: plain for plain, fast in _FAST_CLASSES.items()}
    for module in model.modules():
        if type(module) in to_class:
            module.__class__ = to_class[type(module)]
        if isinstance(module, DilatedReparamBlock):
            for conv in module.children():
                if type(conv) is (nn.Conv2d if enable else FastDepthwiseConv2d):
                    conv.__class__ = FastDepthwiseConv2d if enable else nn.Conv2d
    if isinstance(model, unireplknet.UniRepLKNet):
        stem_conv = model.downsample_layers[0][0]
        if type(stem_conv) is (nn.Conv2d if enable else ChannelsLastStemConv2d):
            stem_conv.__class__ = ChannelsLastStemConv2d if enable else nn.Conv2d
    return model
