"""UniRepLKNet: large-kernel ConvNets with Dilated Reparam Blocks.

Paper: "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series
and Image Recognition", X. Ding et al., CVPR 2024 (arXiv:2311.15599).

Compatible with the official release (github.com/AILab-CVC/UniRepLKNet): the same module names, state_dict keys
and shapes (training and deploy form), the same constructor keywords and the same nine timm model names, so the
released checkpoints load strictly. Defects of the original that are fixed here:
  * reparameterisation works for any device and dtype (no CPU-only identity kernel, no positional-argument mix-up);
  * the backbone mode (features for dense prediction) needs neither mmseg nor mmdet;
  * `with_cp` uses non-reentrant checkpointing and does not update BatchNorm running statistics twice;
  * a checkpoint that does not fit says which keys and shapes differ and which variant it looks like.

This file is standalone (torch, timm and the standard library only) so it can be copied into MMSegmentation or
MMDetection projects.

Shapes: images (B, in_chans, H, W); stage i works at (B, dims[i], H / 2**(i+2), W / 2**(i+2)); logits (B, num_classes).

What the block computes: `UniRepLKNetBlock.residual_forward`, one module call per step of the paper's Fig. 1, so
forward hooks fire and replacing a module (`block.act = nn.GELU()`, a DRB branch conv) takes effect. The Dilated
Reparam Block calls its branch modules; `get_kernel_bias` / `reparameterize` give its deploy form (the shape of timm's
fastvit `ReparamLargeKernelConv`).

CPU speed-ups (same state_dict and values up to float rounding, measured in BENCHMARKS.md) live apart, in the
optional `unireplknet_cpu.py` beside this file; `fast_cpu_kernels` (default: auto, on where no GPU is visible;
environment override UNIREPLKNET_FAST_CPU=0/1) decides once, at construction, whether the model uses them. Without
that file this one runs the release's computation on every device.
"""
import argparse
import contextlib
import dataclasses
import difflib
import functools
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import (
    FeatureInfo, adapt_input_conv, build_model_with_cfg, generate_default_cfgs, register_model,
    resolve_pretrained_cfg,
)
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import feature_take_indices

__all__ = [
    'UniRepLKNet', 'UniRepLKNetBlock', 'DilatedReparamBlock', 'GRNwithNHWC', 'SEBlock', 'MODEL_NAMES',
    'validate_model_name', 'read_state_dict', 'load_checkpoint_strict', 'load_checkpoint_non_strict',
]

_logger = logging.getLogger(__name__)

HF_HUB_REPO = 'DingXiaoH/UniRepLKNet'

# (depths, dims) of the nine released variants (paper Table 5).
VARIANTS = OrderedDict([
    ('unireplknet_a', ((2, 2, 6, 2), (40, 80, 160, 320))),
    ('unireplknet_f', ((2, 2, 6, 2), (48, 96, 192, 384))),
    ('unireplknet_p', ((2, 2, 6, 2), (64, 128, 256, 512))),
    ('unireplknet_n', ((2, 2, 8, 2), (80, 160, 320, 640))),
    ('unireplknet_t', ((3, 3, 18, 3), (80, 160, 320, 640))),
    ('unireplknet_s', ((3, 3, 27, 3), (96, 192, 384, 768))),
    ('unireplknet_b', ((3, 3, 27, 3), (128, 256, 512, 1024))),
    ('unireplknet_l', ((3, 3, 27, 3), (192, 384, 768, 1536))),
    ('unireplknet_xl', ((3, 3, 27, 3), (256, 512, 1024, 2048))),
])
MODEL_NAMES = tuple(VARIANTS)

# Per-block kernel sizes for the built-in depth configurations: 3 = SmaK block (depthwise 3x3),
# 13 = LarK block (13x13 Dilated Reparam Block). Deeper stage-3 stacks interleave SmaK blocks after each LarK block.
DEFAULT_KERNEL_SIZES = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3,) * 3, (13,) * 3, (13, 3) * 9, (13,) * 3),
    (3, 3, 27, 3): ((3,) * 3, (13,) * 3, (13, 3, 3) * 9, (13,) * 3),
}

# Dilated Reparam Block branches (kernel k, dilation r) per large kernel K. Each branch is equivalent to a sparse
# dense kernel of size r * (k - 1) + 1 <= K. The code of the release is authoritative (the paper's table has a typo).
DRB_BRANCHES = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 2), (3, 3)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}
# Block token mixers: 0 = none, 3 and 5 = plain depthwise conv, 7..17 = Dilated Reparam Block.
BLOCK_KERNEL_SIZES = (0, 3, 5) + tuple(k for k in DRB_BRANCHES if k >= 7)


# --------------------------------------------------------------------------------------------------------------------
# Small layers
# --------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _implicit_gemm_conv_class():
    """The iGEMM large-kernel depthwise conv class if the optional package is installed, else None (logged once)."""
    try:
        from depthwise_conv2d_implicit_gemm import DepthWiseConv2dImplicitGEMM
    except ImportError:
        _logger.info('depthwise_conv2d_implicit_gemm is not installed: large depthwise kernels use nn.Conv2d '
                     '(same results; the iGEMM implementation is only faster on GPU at larger batch sizes).')
        return None
    _logger.info('Using DepthWiseConv2dImplicitGEMM for large depthwise kernels.')
    return DepthWiseConv2dImplicitGEMM


def depthwise_conv(channels: int, kernel_size: int, bias: bool, attempt_use_lk_impl: bool = True) -> nn.Module:
    """A stride-1 'same' depthwise conv; kernels larger than 5 use the iGEMM implementation when it is installed.

    The iGEMM module stores `weight` (and `bias`) like nn.Conv2d, so state_dict keys do not depend on the choice.
    """
    if attempt_use_lk_impl and kernel_size > 5:
        implicit_gemm_conv = _implicit_gemm_conv_class()
        if implicit_gemm_conv is not None:
            return implicit_gemm_conv(channels, kernel_size, bias=bias)
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)


def batch_norm(channels: int, use_sync_bn: bool) -> nn.Module:
    return nn.SyncBatchNorm(channels) if use_sync_bn else nn.BatchNorm2d(channels)


def fuse_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.Module):
    """(weight, bias) of a conv followed by an eval-mode BatchNorm, as one conv. Keeps device and dtype."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv_bias = 0 if bias is None else bias
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (conv_bias - bn.running_mean) * scale


def dilated_to_dense_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """(C, 1, k, k) kernel with dilation r -> equivalent (C, 1, r(k-1)+1, r(k-1)+1) kernel (zeros between taps).

    Same result as the paper's transposed conv with a 1x1 identity kernel at stride r (Appendix A).
    """
    if dilation == 1:
        return kernel
    channels, in_per_group, k, _ = kernel.shape
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(channels, in_per_group, size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


def _set_conv_weight_and_bias(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
    """Give a conv (nn.Conv2d or iGEMM) new weights and a bias in place, keeping its class and parameter order."""
    conv.weight = nn.Parameter(weight)
    conv.bias = nn.Parameter(bias)


class NCHWtoNHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class NHWCtoNCHW(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def grn_response_scale(norm: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """GRN's per-sample, per-channel factor gamma * Nx + 1, with Nx = norm / (mean over channels of norm + 1e-6);
    norm has the channels last and gamma broadcasts against it."""
    return gamma * (norm / (norm.mean(dim=-1, keepdim=True) + 1e-6)) + 1


class GRNwithNHWC(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on (B, H, W, C) input.

    out = (gamma * Nx + 1) * x + beta, with Gx the L2 norm of each channel over H, W and Nx = Gx / (mean_c Gx + 1e-6).
    gamma and beta have shape (1, 1, 1, C) as in the release. In deploy form beta is folded into the next Linear.
    """

    def __init__(self, dim: int, use_bias: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim)) if use_bias else None

    def forward(self, x):
        out = grn_response_scale(self.global_response(x), self.gamma) * x
        return out if self.beta is None else out + self.beta

    def global_response(self, x):
        """Gx: each sample's and channel's L2 norm over H, W, shape (B, 1, 1, C)."""
        return torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)


class SEBlock(nn.Module):
    """Squeeze-and-Excitation: global average pool -> 1x1 conv `down` -> ReLU -> 1x1 conv `up` -> sigmoid gate.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, internal_channels: int):
        super().__init__()
        self.down = nn.Conv2d(channels, internal_channels, kernel_size=1, bias=True)
        self.up = nn.Conv2d(internal_channels, channels, kernel_size=1, bias=True)

    def forward(self, x):
        gate = torch.sigmoid(self.up(F.relu(self.down(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


# --------------------------------------------------------------------------------------------------------------------
# Dilated Reparam Block and the UniRepLKNet block
# --------------------------------------------------------------------------------------------------------------------

class DilatedReparamBlock(nn.Module):
    """Depthwise K x K conv enhanced by parallel dilated small-kernel depthwise convs (paper Sec. 3.1, Fig. 2).

    Training form: BN(conv_KxK(x)) + sum over branches (k, r) of BN(dilated conv_kxk(x)).
    Deploy form: one K x K depthwise conv with bias (`lk_origin`), numerically equivalent in eval mode.
    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False, use_sync_bn: bool = False,
                 attempt_use_lk_impl: bool = True):
        super().__init__()
        if kernel_size not in DRB_BRANCHES:
            raise ValueError(f'DilatedReparamBlock supports kernel sizes {sorted(DRB_BRANCHES)}, got {kernel_size}.')
        self.kernel_size = kernel_size
        self.branches = DRB_BRANCHES[kernel_size]
        self.deploy = deploy
        self.lk_origin = depthwise_conv(channels, kernel_size, bias=deploy, attempt_use_lk_impl=attempt_use_lk_impl)
        if not deploy:
            self.origin_bn = batch_norm(channels, use_sync_bn)
            for k, r in self.branches:
                self.add_module(f'dil_conv_k{k}_{r}', nn.Conv2d(
                    channels, channels, k, padding=(r * (k - 1) + 1) // 2, dilation=r, groups=channels, bias=False))
                self.add_module(f'dil_bn_k{k}_{r}', batch_norm(channels, use_sync_bn))

    def forward(self, x):
        if self.deploy:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f'dil_bn_k{k}_{r}')(getattr(self, f'dil_conv_k{k}_{r}')(x))
        return out

    def get_kernel_bias(self):
        """The (C, 1, K, K) kernel and (C,) bias of the single conv equivalent to this block in eval mode."""
        kernel, bias = fuse_conv_bn(self.lk_origin.weight, self.lk_origin.bias, self.origin_bn)
        for k, r in self.branches:
            conv = getattr(self, f'dil_conv_k{k}_{r}')
            branch_kernel, branch_bias = fuse_conv_bn(conv.weight, conv.bias, getattr(self, f'dil_bn_k{k}_{r}'))
            pad = self.kernel_size // 2 - r * (k - 1) // 2
            kernel = kernel + F.pad(dilated_to_dense_kernel(branch_kernel, r), [pad] * 4)
            bias = bias + branch_bias
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self):
        """Convert to deploy form in place (uses BN running statistics). Does nothing if already converted."""
        if self.deploy:
            return
        _set_conv_weight_and_bias(self.lk_origin, *self.get_kernel_bias())
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')
        self.deploy = True

    merge_dilated_branches = reparameterize  # the release's name


@contextlib.contextmanager
def _batch_norm_statistics_restored(module: nn.Module):
    """Undo the BatchNorm running-statistics updates made inside the block (for checkpoint recomputation).

    The recomputation must run exactly like the first forward pass (same saved tensors, batch statistics in training
    mode), so the BNs do update their buffers; restoring them afterwards keeps the batch from being counted twice.
    """
    buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


class UniRepLKNetBlock(nn.Module):
    """LarK block (K >= 7, Dilated Reparam Block), SmaK block (K = 3 or 5, depthwise conv) or K = 0 (no mixer).

    x + drop_path(gamma * F(x)) (paper Sec. 3, Fig. 1), F as written in `residual_forward`. Deploy form: the BNs, GRN
    beta and layer scale are folded into dwconv and the second Linear. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0., layer_scale_init_value: float = 1e-6,
                 deploy: bool = False, attempt_use_lk_impl: bool = True, with_cp: bool = False,
                 use_sync_bn: bool = False, ffn_factor: int = 4):
        super().__init__()
        if kernel_size not in BLOCK_KERNEL_SIZES:
            raise ValueError(
                f'Unsupported kernel size {kernel_size}: use 0 (no token mixer), 3 or 5 (depthwise conv) or an odd '
                f'size from 7 to 17 (Dilated Reparam Block); allowed: {BLOCK_KERNEL_SIZES}.')
        self.with_cp = with_cp
        self.deploy = deploy
        if kernel_size == 0:
            self.dwconv = nn.Identity()
        elif kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy, use_sync_bn=use_sync_bn,
                                              attempt_use_lk_impl=attempt_use_lk_impl)
        else:
            self.dwconv = depthwise_conv(dim, kernel_size, bias=deploy, attempt_use_lk_impl=attempt_use_lk_impl)
        self.norm = nn.Identity() if deploy or kernel_size == 0 else batch_norm(dim, use_sync_bn)
        self.se = SEBlock(dim, dim // 4)

        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(NCHWtoNHWC(), nn.Linear(dim, ffn_dim))
        self.act = nn.Sequential(nn.GELU(), GRNwithNHWC(ffn_dim, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim), NHWCtoNCHW())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=False), NHWCtoNCHW(), batch_norm(dim, use_sync_bn))

        use_layer_scale = not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        if self.with_cp and torch.is_grad_enabled():
            return self.checkpointed_forward(x)
        return self.residual_forward(x)

    # TorchDynamo cannot trace checkpoint with a context_fn: under torch.compile this frame runs eagerly (the rest of
    # the model is compiled) instead of failing, without suppressing compile errors elsewhere.
    @torch.compiler.disable
    def checkpointed_forward(self, x):
        """residual_forward under non-reentrant checkpointing; the recomputation restores BatchNorm statistics."""
        return torch.utils.checkpoint.checkpoint(
            self.residual_forward, x, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _batch_norm_statistics_restored(self)))

    def residual_forward(self, x):
        """The block as the paper draws it."""
        y = self.dwconv(x)      # depthwise K x K conv, or the Dilated Reparam Block for K >= 7
        y = self.norm(y)        # BatchNorm (Identity in deploy form)
        y = self.se(y)          # Squeeze-and-Excitation
        y = self.pwconv1(y)     # NCHW -> NHWC, Linear C -> 4C
        y = self.act(y)         # GELU, GRN
        y = self.pwconv2(y)     # Linear 4C -> C, NHWC -> NCHW, BatchNorm (training form)
        return x + self.drop_path(self.layer_scale(y))

    def layer_scale(self, x):
        return x if self.gamma is None else x * self.gamma.view(1, -1, 1, 1)

    @torch.no_grad()
    def reparameterize(self):
        """Fold every BN, the DRB branches, GRN beta and the layer scale (eval-mode equivalent). Idempotent."""
        if self.deploy:
            return
        self._fold_norm_into_dwconv()
        self._fold_into_pwconv2()
        self.deploy = True

    def _fold_norm_into_dwconv(self):
        if isinstance(self.dwconv, nn.Identity):
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
        else:
            conv = self.dwconv
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            _set_conv_weight_and_bias(conv, *fuse_conv_bn(conv.weight, conv.bias, self.norm))
            self.norm = nn.Identity()

    def _fold_into_pwconv2(self):
        """Linear(4C, C) -> BN -> * gamma after GRN's `+ beta` becomes one Linear with bias."""
        linear, bn = self.pwconv2[0], self.pwconv2[2]
        grn = self.act[1]
        bn_scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        layer_scale = 1 if self.gamma is None else self.gamma
        bias = bn.bias + (linear.weight @ grn.beta.reshape(-1) - bn.running_mean) * bn_scale
        linear.weight = nn.Parameter(linear.weight * (bn_scale * layer_scale).unsqueeze(1))
        linear.bias = nn.Parameter(bias * layer_scale)
        self.pwconv2 = nn.Sequential(linear, self.pwconv2[1])
        grn.beta = None
        self.gamma = None


# --------------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------------

class UniRepLKNet(nn.Module):
    """UniRepLKNet (paper Sec. 3, Table 5).

    Two modes, as in the release:
      * classification (default): stem and 4 stages -> global average pool -> LayerNorm (`norm`) -> Linear (`head`);
        forward returns (B, num_classes) logits.
      * backbone (`init_cfg` or `out_indices` given, `num_classes=None`): forward returns a list with the output of
        each stage in `out_indices` (default all four, strides 4/8/16/32), each passed through its own channels-first
        LayerNorm `norm{i}`. `init_cfg=dict(checkpoint=path)` loads a checkpoint non-strictly (logged report).

    Args (the keywords of the release):
        in_chans: input channels (3 for images, 1 for audio spectrograms).
        num_classes: classifier outputs (0: no classifier, forward returns pooled features; None: backbone mode).
        depths, dims: blocks and channels per stage.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        layer_scale_init_value: initial layer scale (None or <= 0: no layer scale).
        head_init_scale: multiplier of the initial classifier weight and bias.
        kernel_sizes: per-stage tuple of per-block kernel sizes (0, 3, 5, 7..17); default from `depths`.
        deploy: build the reparameterised (inference) structure directly.
        with_cp: checkpoint every block and the stem (non-reentrant) to save memory during training; `use_checkpoint`
            (RepLKNet's name) is accepted too.
        init_cfg: backbone mode; dict(checkpoint=path or None) as in MMSegmentation/MMDetection configs.
        attempt_use_lk_impl: use the optional iGEMM package for large depthwise kernels if installed.
        use_sync_bn: SyncBatchNorm instead of BatchNorm2d inside the blocks.
        out_indices: backbone mode; which stages to return (only stages up to the last one are built).
        fast_cpu_kernels: use the CPU speed-ups of unireplknet_cpu.py (None: where no GPU is visible, unless
            UNIREPLKNET_FAST_CPU=0/1 says otherwise). Same state_dict and values up to float rounding.
    """

    def __init__(self, in_chans: int = 3, num_classes: Optional[int] = 1000, depths: Sequence[int] = (3, 3, 27, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = 1e-6, head_init_scale: float = 1.,
                 kernel_sizes: Optional[Sequence[Sequence[int]]] = None, deploy: bool = False, with_cp: bool = False,
                 init_cfg: Optional[dict] = None, attempt_use_lk_impl: bool = True, use_sync_bn: bool = False,
                 out_indices: Optional[Sequence[int]] = None, fast_cpu_kernels: Optional[bool] = None,
                 use_checkpoint: Optional[bool] = None, **kwargs):
        super().__init__()
        if kwargs:
            _logger.warning(f'UniRepLKNet ignores unknown arguments: {sorted(kwargs)}')
        if use_checkpoint is not None:  # RepLKNet's name for with_cp
            if with_cp and not use_checkpoint:
                raise ValueError('with_cp=True contradicts use_checkpoint=False (two names of one switch): pass one.')
            with_cp = use_checkpoint
        depths, dims = tuple(depths), tuple(dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f'UniRepLKNet has 4 stages: depths and dims need 4 entries, got {depths} and {dims}.')
        self.kernel_sizes = _resolve_kernel_sizes(depths, kernel_sizes)
        self.depths, self.dims, self.in_chans = depths, dims, in_chans
        self.deploy = deploy
        self.with_cp = with_cp
        self.init_cfg = init_cfg
        self.out_indices = _resolve_out_indices(init_cfg, out_indices, num_classes)
        self.num_classes = 0 if self.out_indices is not None else num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        num_stages = 4 if self.out_indices is None else max(self.out_indices) + 1

        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
            LayerNorm2d(dims[0] // 2, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
            LayerNorm2d(dims[0], eps=1e-6))
        self.downsample_layers = nn.ModuleList([stem] + [
            nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], kernel_size=3, stride=2, padding=1),
                          LayerNorm2d(dims[i], eps=1e-6))
            for i in range(1, num_stages)])

        # Computed on the CPU so that building under `with torch.device('meta')` works and rates match the release.
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                UniRepLKNetBlock(dims[i], self.kernel_sizes[i][j], drop_path=drop_path_rates[first + j],
                                 layer_scale_init_value=layer_scale_init_value, deploy=deploy,
                                 attempt_use_lk_impl=attempt_use_lk_impl, with_cp=with_cp, use_sync_bn=use_sync_bn)
                for j in range(depths[i])]))

        feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in range(num_stages)]
        if self.out_indices is None:
            self.feature_info = feature_info
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        else:
            for i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(dims[i], eps=1e-6))
                feature_info[i]['module'] = f'norm{i}'
            self.feature_info = FeatureInfo(feature_info, self.out_indices)

        self.apply(_init_weights)
        if self.num_classes > 0:
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)
        if init_cfg is not None:
            self.init_weights()
        self.fast_cpu_kernels = False
        if _resolve_fast_cpu_kernels(fast_cpu_kernels):
            self.set_fast_cpu_kernels(True)

    def init_weights(self):
        """Backbone mode: load `init_cfg['checkpoint']` non-strictly (MMSegmentation/MMDetection convention)."""
        checkpoint = (self.init_cfg or {}).get('checkpoint')
        if checkpoint is None:
            _logger.info('UniRepLKNet backbone: no init_cfg checkpoint given, keeping the random initialisation.')
            return
        load_checkpoint_non_strict(self, checkpoint)

    @torch.jit.ignore
    def no_weight_decay(self):
        """No names beyond the usual "1-D or bias" filter, as in the release's training recipe.

        That filter already excludes layer scales, norms and biases. GRN gamma/beta are stored as (1, 1, 1, C), so
        they pass it and ARE decayed, as they were when the published models were trained (ConvNeXt V2, where GRN
        comes from, does not decay them; return their names here to train that way)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Parameter groups for timm's layer-wise LR decay: stem, then downsample + blocks stage by stage, then head."""
        return dict(
            stem=r'^downsample_layers\.0\.',
            blocks=r'^(?:downsample_layers|stages)\.(\d+)' if coarse else [
                (r'^downsample_layers\.(\d+)', (0,)),
                (r'^stages\.(\d+)\.(\d+)', None),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.with_cp = enable
        for block in self.blocks():
            block.with_cp = enable

    @property
    def grad_checkpointing(self) -> bool:
        """timm's name for `with_cp`."""
        return self.with_cp

    def set_fast_cpu_kernels(self, enable: bool = True):
        """Switch the CPU speed-ups of unireplknet_cpu.py on or off in place (same state_dict and values)."""
        if enable:
            _fast_cpu_module(required=True).convert_to_fast_cpu(self)
        elif self.fast_cpu_kernels:
            _fast_cpu_module(required=True).convert_to_fast_cpu(self, enable=False)
        self.fast_cpu_kernels = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if self.out_indices is not None:
            raise ValueError('UniRepLKNet in backbone mode (init_cfg/out_indices) has no classifier to reset.')
        if global_pool not in (None, 'avg'):
            raise ValueError(f"UniRepLKNet only supports global_pool='avg', got {global_pool!r}.")
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        head.apply(_init_weights)
        self.head = head.to(self.norm.weight)

    def blocks(self):
        return [block for stage in self.stages for block in stage]

    def forward_features(self, x):
        """(B, in_chans, H, W) -> last stage output (B, dims[-1], H/32, W/32)."""
        for index, stage in enumerate(self.stages):
            x = stage(self.downsample(index, x))
        return x

    def downsample(self, index: int, x):
        """downsample_layers[index](x); under with_cp the stem (index 0) is checkpointed: its activations at half the
        input resolution are the largest kept outside the blocks. The later downsampling layers' are small, and
        recomputing them would cost time for little memory (BENCHMARKS.md)."""
        layer = self.downsample_layers[index]
        if index == 0 and self.with_cp and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def forward_head(self, x, pre_logits: bool = False):
        """(B, C, h, w) -> global average pool -> LayerNorm -> (B, C) if pre_logits else Linear -> (B, num_classes)."""
        if self.out_indices is not None:
            raise ValueError('UniRepLKNet in backbone mode (init_cfg/out_indices) has no head.')
        x = self.norm(x.mean(dim=(-2, -1)))
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x, indices: Optional[Union[int, Sequence[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm feature API: the outputs of the stages in `indices` (last n stages if int, all if None), each through
        its LayerNorm `norm{i}` in backbone mode.

        Returns the list of (B, dims[i], H / 2**(i+2), W / 2**(i+2)) features, or (last stage output, that list).
        `stop_early` skips the stages after the last requested one. `norm=True` is refused: UniRepLKNet's final norm
        acts on pooled features, not on a feature map.
        """
        if output_fmt != 'NCHW' or norm:
            raise ValueError(f'UniRepLKNet features are NCHW maps without the final norm; got '
                             f'output_fmt={output_fmt!r}, norm={norm}.')
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        for i in range(max_index + 1 if stop_early else len(self.stages)):
            x = self.stages[i](self.downsample(i, x))
            if i in take_indices:
                stage_norm = getattr(self, f'norm{i}', None)
                intermediates.append(x if stage_norm is None else stage_norm(x))
        return intermediates if intermediates_only else (x, intermediates)

    def forward_backbone(self, x):
        """The release's backbone forward: [norm{i}(stage i output) for i in out_indices], strides 4 * 2**i."""
        return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)

    def forward(self, x):
        if self.out_indices is not None:
            return self.forward_backbone(x)
        return self.forward_head(self.forward_features(x))

    def reparameterize_unireplknet(self):
        """Convert every block to the deploy structure in place (uses BN running statistics; compare in eval mode).

        `timm.utils.reparameterize_model(model)` does the same: it calls `reparameterize()` on every block.
        """
        for block in self.blocks():
            block.reparameterize()
        self.deploy = True

    def load_pretrained(self, checkpoint_path: str):
        """timm `custom_load` hook: load a released checkpoint, adapting what timm adapts for its own weights.

        Classification mode: the classifier is dropped (and logged) when num_classes differs from the checkpoint, and
        the stem is adapted when in_chans differs; everything else must match exactly. Backbone mode: non-strict.
        """
        state_dict = read_state_dict(checkpoint_path)
        stem_key = 'downsample_layers.0.0.weight'
        if stem_key in state_dict and state_dict[stem_key].shape[1] != self.in_chans:
            _logger.info(f'Adapting the pretrained stem from {state_dict[stem_key].shape[1]} to {self.in_chans} '
                         f'input channels.')
            state_dict[stem_key] = adapt_input_conv(self.in_chans, state_dict[stem_key])
        if self.out_indices is not None:
            load_checkpoint_non_strict(self, state_dict)
            return
        head_weight = state_dict.get('head.weight')
        if head_weight is not None and (self.num_classes == 0 or head_weight.shape[0] != self.num_classes):
            _logger.info(f'Not loading the pretrained classifier ({head_weight.shape[0]} classes): the model has '
                         f'num_classes={self.num_classes}; the new head keeps its random initialisation.')
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
            self._load_without_head(state_dict)
            return
        load_checkpoint_strict(self, state_dict)

    def _load_without_head(self, state_dict):
        expected_missing = {k for k in self.state_dict() if k.startswith('head.')}
        report = _compare_state_dicts(self.state_dict(), state_dict)
        if report.unexpected or report.shape_mismatch or set(report.missing) - expected_missing:
            raise ValueError(_mismatch_message(self, state_dict, report))
        self.load_state_dict(state_dict, strict=False)


def _init_weights(module: nn.Module):
    """Truncated normal (std .02) for every conv and linear weight, zero bias (release init).

    Tensors on the meta device have no values to initialise (and timm's trunc_normal_ is slow there).
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.is_meta:
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _fast_cpu_module(required: bool):
    """unireplknet_cpu (the optional CPU speed-ups beside this file), or None if it is absent and not required.

    Imported here rather than at the top: it subclasses this file's modules, so it imports this file."""
    try:
        import unireplknet_cpu
    except ImportError as error:
        if error.name != 'unireplknet_cpu':  # the module is there but one of its imports failed
            raise
        if required:
            raise ImportError('fast_cpu_kernels=True needs unireplknet_cpu.py next to unireplknet.py; without it the '
                              'model runs the plain computation (fast_cpu_kernels=False).') from error
        return None
    return unireplknet_cpu


def _resolve_fast_cpu_kernels(requested: Optional[bool]) -> bool:
    """Whether to use unireplknet_cpu: the constructor argument if given, else $UNIREPLKNET_FAST_CPU (0 or 1), else
    auto: on when the module is available and no GPU is visible (its kernels were measured on CPU only)."""
    if requested is None and os.environ.get('UNIREPLKNET_FAST_CPU', '') != '':
        setting = os.environ['UNIREPLKNET_FAST_CPU']
        if setting not in ('0', '1'):
            raise ValueError(f'UNIREPLKNET_FAST_CPU must be 0 or 1, got {setting!r}.')
        requested = setting == '1'
    if requested is None:
        return not torch.cuda.is_available() and _fast_cpu_module(required=False) is not None
    return requested


def _resolve_kernel_sizes(depths, kernel_sizes):
    if kernel_sizes is None:
        if depths not in DEFAULT_KERNEL_SIZES:
            raise ValueError(f'No built-in kernel sizes for depths {depths} (built-in: {list(DEFAULT_KERNEL_SIZES)}): '
                             f'pass kernel_sizes, one tuple of per-block kernel sizes per stage.')
        return DEFAULT_KERNEL_SIZES[depths]
    kernel_sizes = tuple(tuple(stage) for stage in kernel_sizes)
    stage_lengths = tuple(len(stage) for stage in kernel_sizes)
    if stage_lengths != depths:
        raise ValueError(f'kernel_sizes must give one kernel size per block: depths {depths}, but kernel_sizes has '
                         f'{stage_lengths} entries per stage.')
    unsupported = sorted({k for stage in kernel_sizes for k in stage} - set(BLOCK_KERNEL_SIZES))
    if unsupported:
        raise ValueError(f'Unsupported kernel sizes {unsupported}: use 0 (no token mixer), 3 or 5 (depthwise conv) or '
                         f'an odd size from 7 to 17 (Dilated Reparam Block); allowed: {BLOCK_KERNEL_SIZES}.')
    return kernel_sizes


def _resolve_out_indices(init_cfg, out_indices, num_classes):
    """None in classification mode, else the sorted stage indices to return (backbone mode)."""
    if init_cfg is None and out_indices is None:
        if num_classes is None:
            raise ValueError('num_classes=None selects the backbone mode, which needs init_cfg (MMSeg/MMDet style) or '
                             'out_indices; for a model without classifier use num_classes=0.')
        return None
    if num_classes:
        raise ValueError(f'The backbone mode (init_cfg or out_indices given) builds no classifier, but num_classes='
                         f'{num_classes}: pass num_classes=None.')
    out_indices = (0, 1, 2, 3) if out_indices is None else tuple(sorted(set(out_indices)))
    if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
        raise ValueError(f'out_indices must be stage indices from 0 to 3, got {out_indices}.')
    return out_indices


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------

def read_state_dict(path_or_state: Union[str, os.PathLike, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """A checkpoint file or dict -> its model state_dict (unwraps 'model' or 'state_dict', strips DDP 'module.')."""
    if isinstance(path_or_state, (str, os.PathLike)):
        if not os.path.isfile(path_or_state):
            raise FileNotFoundError(f'Checkpoint file not found: {path_or_state}')
        # Training checkpoints of the release also store the argparse Namespace of their arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path_or_state, map_location='cpu', weights_only=True)
    else:
        checkpoint = path_or_state
    for key in ('model', 'state_dict'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = dict(checkpoint)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


@dataclasses.dataclass
class _StateDictDifference:
    missing: list
    unexpected: list
    shape_mismatch: list  # (key, checkpoint shape, model shape)


def _compare_state_dicts(model_state, checkpoint_state) -> _StateDictDifference:
    return _StateDictDifference(
        missing=[k for k in model_state if k not in checkpoint_state],
        unexpected=[k for k in checkpoint_state if k not in model_state],
        shape_mismatch=[(k, tuple(checkpoint_state[k].shape), tuple(v.shape)) for k, v in model_state.items()
                        if k in checkpoint_state and tuple(checkpoint_state[k].shape) != tuple(v.shape)])


def describe_state_dict(state_dict: Dict[str, torch.Tensor]) -> str:
    """Which UniRepLKNet a state_dict looks like, e.g. 'unireplknet_t in training form', from its keys and shapes."""
    stage_convs = ['downsample_layers.0.3.weight'] + [f'downsample_layers.{i}.0.weight' for i in range(1, 4)]
    dims = tuple(state_dict[key].shape[0] for key in stage_convs if key in state_dict)
    depths = tuple(len({m.group(1) for m in (re.match(rf'stages\.{i}\.(\d+)\.', k) for k in state_dict) if m})
                   for i in range(4))
    is_training_form = any(k.endswith('pwconv2.2.weight') for k in state_dict)
    form = 'training form' if is_training_form else 'deploy (reparameterised) form'
    names = [name for name, (v_depths, v_dims) in VARIANTS.items() if (v_depths, v_dims) == (depths, dims)]
    if not any(depths):
        return 'not a UniRepLKNet state_dict (no stages.* keys)'
    arch = names[0] if names else f'a UniRepLKNet with depths {depths} and dims {dims}'
    return f'{arch} in {form}'


def _mismatch_message(model: nn.Module, state_dict, report: _StateDictDifference, limit: int = 12) -> str:
    def listing(title, items):
        shown = '\n'.join(f'    {item}' for item in items[:limit])
        more = f'\n    ... and {len(items) - limit} more' if len(items) > limit else ''
        return f'  {title} ({len(items)}):\n{shown}{more}' if items else ''

    shapes = [f'{k}: checkpoint {c} vs model {m}' for k, c, m in report.shape_mismatch]
    parts = [
        f'Checkpoint does not fit this model. Checkpoint: {describe_state_dict(state_dict)}; '
        f'model: {describe_state_dict(model.state_dict())}.',
        listing('missing keys (in the model, not in the checkpoint)', report.missing),
        listing('unexpected keys (in the checkpoint, not in the model)', report.unexpected),
        listing('shape mismatches', shapes),
        '  Build the variant the checkpoint was saved from (deploy=True for reparameterised checkpoints; '
        'num_classes must match the head).']
    return '\n'.join(p for p in parts if p)


def load_checkpoint_strict(model: nn.Module, path_or_state) -> None:
    """Load exactly: every key and shape must match, else ValueError listing the differences."""
    state_dict = read_state_dict(path_or_state)
    report = _compare_state_dicts(model.state_dict(), state_dict)
    if report.missing or report.unexpected or report.shape_mismatch:
        raise ValueError(_mismatch_message(model, state_dict, report))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint_non_strict(model: nn.Module, path_or_state) -> None:
    """Load the keys the model has (backbone convention); log missing and unexpected keys, raise on shape mismatch.

    A segmentor checkpoint (keys 'backbone.*') is reduced to its backbone.
    """
    state_dict = read_state_dict(path_or_state)
    model_state = model.state_dict()
    if not set(state_dict) & set(model_state) and any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    report = _compare_state_dicts(model_state, state_dict)
    if report.shape_mismatch or len(report.missing) == len(model_state):
        raise ValueError(_mismatch_message(model, state_dict, report))
    model.load_state_dict(state_dict, strict=False)
    if report.missing:
        _logger.warning(f'Keys missing from the checkpoint (kept as initialised): {report.missing}')
    if report.unexpected:
        _logger.warning(f'Checkpoint keys not used by this model: {report.unexpected}')


# --------------------------------------------------------------------------------------------------------------------
# Pretrained weights and timm registration
# --------------------------------------------------------------------------------------------------------------------

def _cfg(filename: str, num_classes: int = 1000, input_size: int = 224, **kwargs):
    return dict(
        hf_hub_id=HF_HUB_REPO, hf_hub_filename=filename, custom_load=True,
        num_classes=num_classes, input_size=(3, input_size, input_size), pool_size=(input_size // 32,) * 2,
        # The release evaluates 224 px by resize-to-256 + center crop and >= 384 px by resizing (warping) the image.
        crop_pct=0.875 if input_size < 384 else 1.0, crop_mode='center' if input_size < 384 else 'squash',
        interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='downsample_layers.0.0', classifier='head', paper_ids='arXiv:2311.15599',
        origin_url='https://github.com/AILab-CVC/UniRepLKNet', **kwargs)


# The first tag of each architecture is its default (its num_classes is timm's default num_classes).
default_cfgs = generate_default_cfgs({
    'unireplknet_a.in1k': _cfg('unireplknet_a_in1k_224_acc77.03.pth'),
    'unireplknet_f.in1k': _cfg('unireplknet_f_in1k_224_acc78.58.pth'),
    'unireplknet_p.in1k': _cfg('unireplknet_p_in1k_224_acc80.23.pth'),
    'unireplknet_n.in1k': _cfg('unireplknet_n_in1k_224_acc81.64.pth'),
    'unireplknet_t.in1k': _cfg('unireplknet_t_in1k_224_acc83.21.pth'),
    'unireplknet_s.in1k': _cfg('unireplknet_s_in1k_224_acc83.91.pth'),
    'unireplknet_s.in22k_ft_in1k': _cfg('unireplknet_s_in22k_to_in1k_384_acc86.44.pth', input_size=384),
    'unireplknet_s.in22k': _cfg('unireplknet_s_in22k_pretrain.pth', num_classes=21841),
    'unireplknet_b.in22k_ft_in1k': _cfg('unireplknet_b_in22k_to_in1k_384_acc87.40.pth', input_size=384),
    'unireplknet_b.in22k': _cfg('unireplknet_b_in22k_pretrain.pth', num_classes=21841),
    'unireplknet_l.in22k_ft_in1k': _cfg('unireplknet_l_in22k_to_in1k_384_acc87.88.pth', input_size=384),
    'unireplknet_l.in22k': _cfg('unireplknet_l_in22k_pretrain.pth', num_classes=21841, input_size=192),
    'unireplknet_xl.in22k_ft_in1k': _cfg('unireplknet_xl_in22k_to_in1k_384_acc87.96.pth', input_size=384),
    'unireplknet_xl.in22k': _cfg('unireplknet_xl_in22k_pretrain.pth', num_classes=21841, input_size=192),
})

# Boolean factory flags of the release, in its order of precedence, and the pretrained tag each one selects.
LEGACY_PRETRAINED_FLAGS = (('in_1k_pretrained', 'in1k'), ('in_22k_pretrained', 'in22k'),
                           ('in_22k_to_1k', 'in22k_ft_in1k'))


def _released_tags(variant: str):
    return list(default_cfgs[variant].tags)


def validate_model_name(model_name: str) -> None:
    """Raise ValueError naming the valid choices if `model_name` ('arch' or 'arch.tag') is not a UniRepLKNet."""
    arch, _, tag = model_name.partition('.')
    if arch not in VARIANTS:
        close = difflib.get_close_matches(arch, MODEL_NAMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"Unknown model '{model_name}'. UniRepLKNet models: {', '.join(MODEL_NAMES)}.{hint}")
    if tag and tag not in _released_tags(arch):
        raise ValueError(f"Unknown pretrained tag '{tag}' for {arch}; released: {', '.join(_released_tags(arch))}.")


def _pop_legacy_pretrained_tag(variant: str, kwargs: dict) -> Optional[str]:
    """The tag selected by the release's flags (in_1k_pretrained, ...), removing them from kwargs."""
    chosen = None
    for flag, tag in LEGACY_PRETRAINED_FLAGS:
        if kwargs.pop(flag, False) and chosen is None:
            if tag not in _released_tags(variant):
                raise ValueError(f'{variant} has no released {tag} weights ({flag}=True); released: '
                                 f'{", ".join(_released_tags(variant))}.')
            chosen = tag
    return chosen


def released_checkpoint_path(filename: str, cache_dir: Optional[str] = None) -> str:
    """Local path of a released checkpoint: the torch hub checkpoint folder if the file is there, else the HF hub."""
    local_path = os.path.join(torch.hub.get_dir(), 'checkpoints', filename)
    if os.path.isfile(local_path):
        return local_path
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id=HF_HUB_REPO, filename=filename, cache_dir=cache_dir)
    except Exception as error:  # no package, offline, no network, missing file: all end in the same advice
        raise RuntimeError(
            f'Could not get the pretrained checkpoint {filename} from the Hugging Face hub ({HF_HUB_REPO}): {error}\n'
            f'Download https://huggingface.co/{HF_HUB_REPO}/resolve/main/{filename} and put it at {local_path} '
            f"(or pass pretrained_cfg_overlay=dict(file='/path/to/{filename}') to timm.create_model).") from error


def _pretrained_cfg_with_local_file(variant, pretrained_cfg, pretrained_cfg_overlay, cache_dir):
    """Resolve the pretrained cfg and point it at a local file, loaded by UniRepLKNet.load_pretrained."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    if cfg.file:
        if not os.path.isfile(cfg.file):
            raise FileNotFoundError(f'Pretrained checkpoint file not found: {cfg.file}')
        path = cfg.file
    elif cfg.hf_hub_filename:
        path = released_checkpoint_path(cfg.hf_hub_filename, cache_dir)
    else:
        raise ValueError(f'No pretrained weights are known for {variant} with this pretrained_cfg; pass '
                         f"pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth').")
    return dataclasses.replace(cfg, file=path, custom_load=True).to_dict()


def _create_unireplknet(variant: str, pretrained: bool = False, **kwargs) -> UniRepLKNet:
    depths, dims = VARIANTS[variant]
    kwargs.setdefault('depths', depths)
    kwargs.setdefault('dims', dims)
    legacy_tag = _pop_legacy_pretrained_tag(variant, kwargs)
    if legacy_tag is not None:
        pretrained = True
        kwargs['pretrained_cfg'] = legacy_tag

    if pretrained and kwargs.get('deploy'):
        # Released checkpoints are in training form: load them into that structure, then convert it.
        model = _create_unireplknet(variant, pretrained, **dict(kwargs, deploy=False))
        model.reparameterize_unireplknet()
        return model

    features_only = kwargs.pop('features_only', False)
    if features_only:
        # features_only is the release's backbone mode: stage outputs through norm0..norm3, the same state_dict keys.
        if kwargs.pop('feature_cls', None) is not None:
            raise ValueError('UniRepLKNet features_only returns its own backbone; feature_cls is not supported.')
        kwargs.setdefault('out_indices', (0, 1, 2, 3))
        kwargs['num_classes'] = None
    if pretrained:
        kwargs['pretrained_cfg'] = _pretrained_cfg_with_local_file(
            variant, kwargs.pop('pretrained_cfg', None), kwargs.pop('pretrained_cfg_overlay', None),
            kwargs.get('cache_dir'))
    model = build_model_with_cfg(UniRepLKNet, variant, pretrained, **kwargs)
    if features_only:
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return model


# Each factory accepts timm's arguments (pretrained, pretrained_cfg, features_only, out_indices, ...), the
# UniRepLKNet constructor keywords and the release's flags in_1k_pretrained / in_22k_pretrained / in_22k_to_1k.

@register_model
def unireplknet_a(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_a', pretrained, **kwargs)


@register_model
def unireplknet_f(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_f', pretrained, **kwargs)


@register_model
def unireplknet_p(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_p', pretrained, **kwargs)


@register_model
def unireplknet_n(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_n', pretrained, **kwargs)


@register_model
def unireplknet_t(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_t', pretrained, **kwargs)


@register_model
def unireplknet_s(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_s', pretrained, **kwargs)


@register_model
def unireplknet_b(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_b', pretrained, **kwargs)


@register_model
def unireplknet_l(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_l', pretrained, **kwargs)


@register_model
def unireplknet_xl(pretrained=False, **kwargs) -> UniRepLKNet:
    return _create_unireplknet('unireplknet_xl', pretrained, **kwargs)
