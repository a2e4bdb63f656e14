"""RepLKNet: large-kernel ConvNet with structurally re-parameterised depthwise convolutions.

Paper: "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs",
Ding et al., CVPR 2022 (https://arxiv.org/abs/2203.06717), Sec. 4 and Fig. 4.

The network is Stem -> [Stage -> Transition] x 3 -> Stage -> (BN, global pool, Linear):
  * Stem (stride 4): 3x3 s2 conv, DW 3x3, 1x1 conv, DW 3x3 s2; every conv is followed by BN and ReLU.
  * Stage i: `layers[i]` pairs of [RepLK block, ConvFFN block], width `channels[i]`.
  * RepLK block: x + DropPath(BN-1x1-ReLU -> DW KxK (+ parallel DW 5x5, merged after training) -> ReLU -> 1x1-BN)(BN(x))
  * ConvFFN block: x + DropPath(1x1-BN -> GELU -> 1x1-BN)(BN(x)), hidden width `ffn_ratio * C`.
  * Transition: 1x1 conv (C_i -> C_{i+1}) then DW 3x3 s2, each conv-BN-ReLU.

Shapes: input (N, in_channels, H, W); stage i output (N, channels[i], H / 2**(i+2), W / 2**(i+2)); logits (N, num_classes).

This file is standalone (torch, timm and the standard library only) so that it can be copied next to
MMSegmentation / MMDetection. Module names and state_dict keys equal the original release
(github.com/DingXiaoH/RepLKNet-pytorch), so released checkpoints load strictly, in the training form and
(with `small_kernel_merged=True`) in the re-parameterised form.

Differences from the original release, all deliberate:
  * SyncBatchNorm is a per-model choice (`use_sync_bn`, default False). The original flipped a process-wide
    switch and its class default was True, so every BN created afterwards in the process became SyncBN.
  * `structural_reparam()` keeps the padding of the large kernel, so it also works with the iGEMM large-kernel
    implementation (env LARGE_KERNEL_CONV_IMPL; original issue #48).
  * `deep_fuse_BN()` also fuses SyncBatchNorm.
  * Argument errors are ValueErrors that name the fix; an empty `out_indices` is rejected instead of silently
    falling through to the classifier; nothing is printed at construction (standard `logging` instead).
  * Gradient checkpointing is non-reentrant and does not update BN running statistics twice.
"""
import contextlib
import functools
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = [
    'RepLKNet', 'ReparamLargeKernelConv', 'RepLKBlock', 'ConvFFN', 'RepLKNetStage', 'ConvBN', 'get_conv2d',
    'create_RepLKNet31B', 'create_RepLKNet31L', 'create_RepLKNetXL', 'REPLKNET_ALIASES', 'resolve_replknet_name',
    'describe_state_dict_mismatch', 'checkpointed_forward',
]

_logger = logging.getLogger(__name__)

LARGE_KERNEL_IMPL_ENV = 'LARGE_KERNEL_CONV_IMPL'


# --------------------------------------------------------------------------------------------------------------------
# Convolution factory (optional iGEMM large-kernel implementation)
# --------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _implicit_gemm_conv_class(impl_path: str):
    """Import DepthWiseConv2dImplicitGEMM from the folder named by LARGE_KERNEL_CONV_IMPL (imported once)."""
    if impl_path not in sys.path:
        sys.path.append(impl_path)
    try:
        from depthwise_conv2d_implicit_gemm import DepthWiseConv2dImplicitGEMM
    except ImportError as error:
        raise ImportError(
            f'{LARGE_KERNEL_IMPL_ENV}={impl_path!r} is set, but depthwise_conv2d_implicit_gemm could not be imported '
            f'from it ({error}). Build it from cutlass/examples/19_large_depthwise_conv2d_torch_extension '
            f'(python setup.py install) or unset {LARGE_KERNEL_IMPL_ENV} to use nn.Conv2d (same results, slower).'
        ) from error
    _logger.info('Using the iGEMM large-kernel depthwise convolution from %s', impl_path)
    return DepthWiseConv2dImplicitGEMM


def get_conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
               dilation: int, groups: int, bias: bool) -> nn.Module:
    """nn.Conv2d, or the iGEMM depthwise conv for large 'same' depthwise kernels when LARGE_KERNEL_CONV_IMPL is set.

    Both store `weight` (and `bias`) under the same names, so state_dict keys do not depend on the choice.
    """
    impl_path = os.environ.get(LARGE_KERNEL_IMPL_ENV)
    use_large_impl = (impl_path and in_channels == out_channels == groups and kernel_size > 5 and stride == 1
                      and padding == kernel_size // 2 and dilation == 1)
    if use_large_impl:
        return _implicit_gemm_conv_class(impl_path)(in_channels, kernel_size, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bias)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------

class ConvBN(nn.Sequential):
    """Conv (no bias) -> BN [-> activation], children named `conv`, `bn`, `nonlinear` as in the original.

    The conv arguments are kept so that the BN can later be folded into a new conv (`fuse_bn_into_conv`),
    whatever conv implementation `get_conv2d` picked.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: Optional[int] = None, groups: int = 1, dilation: int = 1,
                 norm_layer=nn.BatchNorm2d, act_layer=None):
        super().__init__()
        self.conv_args = dict(
            in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            padding=kernel_size // 2 if padding is None else padding, dilation=dilation, groups=groups)
        self.add_module('conv', get_conv2d(**self.conv_args, bias=False))
        self.add_module('bn', norm_layer(out_channels))
        if act_layer is not None:
            self.add_module('nonlinear', act_layer())

    def fused_kernel_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the single conv equivalent to conv -> BN (uses the BN running statistics)."""
        if not isinstance(self.bn, _BatchNorm):  # already fused by fuse_bn_into_conv
            return self.conv.weight, self.conv.bias
        bn = self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        kernel = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return kernel, bias

    @torch.no_grad()
    def fuse_bn_into_conv(self):
        """Replace conv -> BN by one conv with bias (BN becomes Identity). Call in eval mode."""
        if not isinstance(self.bn, _BatchNorm):
            return
        kernel, bias = self.fused_kernel_and_bias()
        self.conv = _conv_with_weights(self.conv_args, kernel, bias)
        self.bn = nn.Identity()


def _conv_with_weights(conv_args: Dict, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A conv built by get_conv2d(**conv_args, bias=True) holding the given kernel and bias."""
    conv = get_conv2d(**conv_args, bias=True).to(device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    return conv


def _bn_layer(use_sync_bn: bool):
    return nn.SyncBatchNorm if use_sync_bn else nn.BatchNorm2d


class ReparamLargeKernelConv(nn.Module):
    """Large KxK conv-BN with a parallel small kxk conv-BN, merged into one KxK conv after training (Sec. 3, Guideline 3).

    Training form: lkb_origin(x) + small_conv(x); merged form: lkb_reparam(x). Shapes: (N, C_in, H, W) ->
    (N, C_out, H / stride, W / stride). Merging uses BN running statistics, so call `reparameterize()` in eval mode.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 small_kernel: Optional[int], small_kernel_merged: bool = False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd so that padding keeps the size, got {kernel_size}')
        if small_kernel is not None and (small_kernel % 2 == 0 or small_kernel > kernel_size):
            raise ValueError(f'small_kernel must be odd and <= kernel_size ({kernel_size}), got {small_kernel}; '
                             f'use small_kernel=None for no parallel small kernel')
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        # Kept here (not read back from the conv) so merging works for any conv implementation (issue #48).
        self.conv_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=kernel_size // 2, dilation=1, groups=groups)
        if small_kernel_merged:
            self.lkb_reparam = get_conv2d(**self.conv_args, bias=True)
        else:
            self.lkb_origin = ConvBN(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups,
                                     norm_layer=norm_layer)
            if small_kernel is not None:
                self.small_conv = ConvBN(in_channels, out_channels, small_kernel, stride, small_kernel // 2, groups,
                                         norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, 'lkb_reparam'):
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if hasattr(self, 'small_conv'):
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def reparameterize(self):
        """Merge both branches (and their BNs) into `lkb_reparam`. Called by `timm.utils.reparameterize_model`."""
        if hasattr(self, 'lkb_reparam'):
            return
        kernel, bias = self.lkb_origin.fused_kernel_and_bias()
        if hasattr(self, 'small_conv'):
            small_kernel, small_bias = self.small_conv.fused_kernel_and_bias()
            pad = (self.kernel_size - self.small_kernel) // 2  # centre the small kernel inside the large one
            kernel = kernel + F.pad(small_kernel, [pad] * 4)
            bias = bias + small_bias
            del self.small_conv
        del self.lkb_origin
        self.lkb_reparam = _conv_with_weights(self.conv_args, kernel, bias)

    def merge_kernel(self):
        """Name used by the original release; same as `reparameterize`."""
        self.reparameterize()


class RepLKBlock(nn.Module):
    """RepLK block (Fig. 4): x + DropPath(pw2(ReLU(large_kernel(pw1(prelkb_bn(x)))))). (N, C, H, W) -> same."""

    def __init__(self, in_channels: int, dw_channels: int, block_lk_size: int, small_kernel: Optional[int],
                 drop_path: float, small_kernel_merged: bool = False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        # Registration order matches the original so state_dict key order matches too.
        self.pw1 = ConvBN(in_channels, dw_channels, 1, 1, 0, norm_layer=norm_layer, act_layer=nn.ReLU)
        self.pw2 = ConvBN(dw_channels, in_channels, 1, 1, 0, norm_layer=norm_layer)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, dw_channels, block_lk_size, stride=1,
                                                   groups=dw_channels, small_kernel=small_kernel,
                                                   small_kernel_merged=small_kernel_merged, norm_layer=norm_layer)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = norm_layer(in_channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw1(self.prelkb_bn(x))
        out = self.pw2(self.lk_nonlinear(self.large_kernel(out)))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    """ConvFFN block (Fig. 4): x + DropPath(pw2(GELU(pw1(preffn_bn(x))))). (N, C, H, W) -> same."""

    def __init__(self, in_channels: int, internal_channels: int, out_channels: int, drop_path: float,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.preffn_bn = norm_layer(in_channels)
        self.pw1 = ConvBN(in_channels, internal_channels, 1, 1, 0, norm_layer=norm_layer)
        self.pw2 = ConvBN(internal_channels, out_channels, 1, 1, 0, norm_layer=norm_layer)
        self.nonlinear = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))
        return x + self.drop_path(out)


@contextlib.contextmanager
def _bn_running_stats_restored(module: nn.Module):
    """Put every BN buffer (running mean/var, batch counter) in `module` back as it was before the block ran."""
    buffers = [b for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


# TorchDynamo cannot trace checkpoint with a context_fn: under torch.compile this frame runs eagerly (the rest of the
# model is compiled) instead of failing, without suppressing compile errors elsewhere.
@torch.compiler.disable
def checkpointed_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) under non-reentrant activation checkpointing.

    The backward pass re-runs the forward; without care every training-mode BN would update its running
    statistics a second time (the original release had this drift). The recomputation therefore restores the BN
    buffers afterwards, so checkpointed and plain training give the same gradients and BN statistics.
    """
    return checkpoint(module, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _bn_running_stats_restored(module)))


class RepLKNetStage(nn.Module):
    """`num_blocks` x [RepLKBlock, ConvFFN] at constant width, then `norm` (BN if norm_intermediate_features)."""

    def __init__(self, channels: int, num_blocks: int, stage_lk_size: int, drop_path: Sequence[float],
                 small_kernel: Optional[int], dw_ratio: float = 1, ffn_ratio: float = 4,
                 use_checkpoint: bool = False, small_kernel_merged: bool = False,
                 norm_intermediate_features: bool = False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        blocks = []
        for i in range(num_blocks):
            # the RepLK block and the ConvFFN of one layer share the layer's drop-path rate
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), stage_lk_size, small_kernel, drop_path[i],
                                     small_kernel_merged=small_kernel_merged, norm_layer=norm_layer))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), channels, drop_path[i], norm_layer=norm_layer))
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(channels) if norm_intermediate_features else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks only; `norm` is applied by the network to the features it returns for dense prediction."""
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpointed_forward(block, x)
            else:
                x = block(x)
        return x


# --------------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------------

class RepLKNet(nn.Module):
    """RepLKNet (Ding et al., CVPR 2022), classification or dense-prediction backbone.

    Args:
        large_kernel_sizes: large kernel size per stage, e.g. (31, 29, 27, 13).
        layers: number of [RepLK block, ConvFFN] pairs per stage, e.g. (2, 2, 18, 2).
        channels: width per stage, e.g. (128, 256, 512, 1024).
        drop_path_rate: stochastic depth rate, increased linearly over the layers from 0.
        small_kernel: size of the parallel small kernel merged into each large kernel, or None for none (XL).
        dw_ratio: width of the depthwise large-kernel conv relative to the block width (1.5 for XL).
        ffn_ratio: hidden width of ConvFFN relative to the block width.
        in_channels: input image channels.
        num_classes: classifier size (0 gives pooled features), or None in backbone mode.
        out_indices: stages whose (stage-normed) outputs `forward` returns in backbone mode, e.g. (0, 1, 2, 3).
            Give exactly one of num_classes / out_indices.
        use_checkpoint: non-reentrant activation checkpointing of every block (and stem layers 1-3); `with_cp` is
            accepted as another name for it (UniRepLKNet's).
        small_kernel_merged: build the re-parameterised (deploy) form directly.
        use_sync_bn: use nn.SyncBatchNorm in this model (default False; the original class defaulted to True and
            switched every later-built model of the process to SyncBN).
        norm_intermediate_features: add a BN after each stage for the returned features (backbone mode only).

    Shapes: (N, in_channels, H, W) -> (N, num_classes) logits, or a list of (N, channels[i], H/2**(i+2), W/2**(i+2)).
    """

    def __init__(self, large_kernel_sizes: Sequence[int], layers: Sequence[int], channels: Sequence[int],
                 drop_path_rate: float, small_kernel: Optional[int], dw_ratio: float = 1, ffn_ratio: float = 4,
                 in_channels: int = 3, num_classes: Optional[int] = 1000, out_indices: Optional[Sequence[int]] = None,
                 use_checkpoint: bool = False, small_kernel_merged: bool = False, use_sync_bn: bool = False,
                 norm_intermediate_features: bool = False, with_cp: Optional[bool] = None):
        super().__init__()
        if with_cp is not None:  # UniRepLKNet's name for use_checkpoint, so callers can treat both families alike
            if use_checkpoint and not with_cp:
                raise ValueError('use_checkpoint=True contradicts with_cp=False (two names of one switch): pass one.')
            use_checkpoint = with_cp
        num_stages = len(layers)
        if not (len(large_kernel_sizes) == len(channels) == num_stages >= 1):
            raise ValueError(f'large_kernel_sizes, layers and channels need one entry per stage, got '
                             f'{len(large_kernel_sizes)}, {len(layers)} and {len(channels)} entries')
        if (num_classes is None) == (out_indices is None):
            raise ValueError('give exactly one of num_classes (classification, e.g. 1000) and out_indices '
                             f'(dense-prediction backbone, e.g. (0, 1, 2, 3)); got num_classes={num_classes}, '
                             f'out_indices={out_indices}')
        if out_indices is not None:
            out_indices = tuple(out_indices)
            if not out_indices or any(not isinstance(i, int) or not 0 <= i < num_stages for i in out_indices):
                raise ValueError(f'out_indices must be a non-empty sequence of stage indices in 0..{num_stages - 1}, '
                                 f'got {out_indices}')
        if norm_intermediate_features and out_indices is None:
            raise ValueError('norm_intermediate_features=True only applies to backbone mode; also pass out_indices')
        norm_layer = _bn_layer(use_sync_bn)

        self.num_classes = num_classes
        self.out_indices = out_indices
        self.num_features = self.head_hidden_size = channels[-1]
        self.grad_checkpointing = use_checkpoint
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f'stages.{i}')
                             for i, c in enumerate(channels)]

        base_width = channels[0]
        self.stem = nn.ModuleList([
            ConvBN(in_channels, base_width, 3, stride=2, padding=1, norm_layer=norm_layer, act_layer=nn.ReLU),
            ConvBN(base_width, base_width, 3, stride=1, padding=1, groups=base_width, norm_layer=norm_layer,
                   act_layer=nn.ReLU),
            ConvBN(base_width, base_width, 1, stride=1, padding=0, norm_layer=norm_layer, act_layer=nn.ReLU),
            ConvBN(base_width, base_width, 3, stride=2, padding=1, groups=base_width, norm_layer=norm_layer,
                   act_layer=nn.ReLU),
        ])

        # device='cpu': the rates are plain numbers even when the model is built under a meta-device context
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(layers), device='cpu').tolist()
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i in range(num_stages):
            first_layer = sum(layers[:i])
            self.stages.append(RepLKNetStage(
                channels[i], layers[i], large_kernel_sizes[i], drop_path_rates[first_layer:first_layer + layers[i]],
                small_kernel, dw_ratio=dw_ratio, ffn_ratio=ffn_ratio, use_checkpoint=use_checkpoint,
                small_kernel_merged=small_kernel_merged, norm_intermediate_features=norm_intermediate_features,
                norm_layer=norm_layer))
            if i < num_stages - 1:
                self.transitions.append(nn.Sequential(
                    ConvBN(channels[i], channels[i + 1], 1, 1, 0, norm_layer=norm_layer, act_layer=nn.ReLU),
                    ConvBN(channels[i + 1], channels[i + 1], 3, 2, 1, groups=channels[i + 1], norm_layer=norm_layer,
                           act_layer=nn.ReLU)))

        if num_classes is not None:
            self.norm = norm_layer(channels[-1])
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(channels[-1], num_classes) if num_classes > 0 else nn.Identity()

    # ---- forward -----------------------------------------------------------------------------------------------

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem[0](x)
        for layer in self.stem[1:]:
            # layers 1-3 only, as in the original: the first layer's input (the image) needs no gradient
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpointed_forward(layer, x)
            else:
                x = layer(x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """timm feature API: stage outputs (before the transition, through `stages[i].norm`).

        Args:
            indices: last n stages if int, all if None, else the listed stage indices.
            norm: also apply the classifier BN (`norm`) to the last stage's feature when it is taken.
            stop_early: skip the stages after the last requested one.
            intermediates_only: return only the list of features.

        Returns:
            list of (N, C_i, H_i, W_i), or (final feature map, that list).
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"RepLKNet features are NCHW; got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        num_to_run = max_index + 1 if stop_early else len(self.stages)
        intermediates = []
        x = self._forward_stem(x)
        for i in range(num_to_run):
            x = self.stages[i](x)
            if i in take_indices:
                feature = self.stages[i].norm(x)
                if norm and i == last_index and hasattr(self, 'norm'):
                    feature = self.norm(feature)
                intermediates.append(feature)
            if i < last_index and i < num_to_run - 1:
                x = self.transitions[i](x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last index in `indices` (and the classifier); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.transitions = self.transitions[:max_index]
        if (prune_head or prune_norm or max_index < len(self.feature_info) - 1) and self.num_classes is not None:
            self.norm = nn.Identity()
            self.head = nn.Identity()
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Classification mode: last stage map (N, C, H/32, W/32), before `norm`. Backbone mode: the feature list."""
        if self.out_indices is not None:
            return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        x, _ = self.forward_intermediates(x, indices=[len(self.stages) - 1])
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """BN -> global average pool -> Linear: (N, C, h, w) -> (N, num_classes), or (N, C) if pre_logits."""
        if self.out_indices is not None:
            raise ValueError('this RepLKNet was built as a backbone (out_indices given) and has no head')
        x = self.avgpool(self.norm(x)).flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = self.forward_features(x)
        if self.out_indices is not None:
            return x
        return self.forward_head(x)

    # ---- re-parameterisation -----------------------------------------------------------------------------------

    def structural_reparam(self):
        """Merge every large kernel with its small kernel (eval mode). Keys become `large_kernel.lkb_reparam.*`,
        identical to a model built with small_kernel_merged=True. Same as `timm.utils.reparameterize_model`."""
        for module in self.modules():
            if isinstance(module, ReparamLargeKernelConv):
                module.reparameterize()

    def deep_fuse_BN(self):
        """Fold the BN of every conv-BN pair (BatchNorm2d or SyncBatchNorm) into its conv (eval mode).

        The pre-norm BNs (prelkb_bn, preffn_bn, stage/classifier norm) have no conv before them and stay.
        """
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fuse_bn_into_conv()

    # ---- timm model API ----------------------------------------------------------------------------------------

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.use_checkpoint = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise LR decay: stem, then one group per stage (coarse) or per block.

        A transition and a stage norm join the group of the stage's last block (99999 is timm's MATCH_PREV_GROUP).
        """
        return dict(
            stem=r'^stem',
            blocks=[(r'^stages\.(\d+)', None), (r'^transitions\.(\d+)', (99999,))] if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),
                (r'^transitions\.(\d+)', (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """No parameter is exempt by name; 1-D params (BN) and biases are exempt by shape in timm/optim factories."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """New head with `num_classes` outputs (0: pooled features). Only average pooling exists."""
        if self.out_indices is not None:
            raise ValueError('this RepLKNet was built as a backbone (out_indices given) and has no classifier')
        if global_pool not in (None, '', 'avg'):
            raise ValueError(f"RepLKNet only supports global_pool='avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ---- checkpoint loading ------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, but a checkpoint of another variant or form fails with a readable summary."""
        problem = describe_state_dict_mismatch(self, state_dict, strict)
        if problem:
            raise ValueError(problem)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def describe_state_dict_mismatch(model: nn.Module, state_dict, strict: bool = True, max_listed: int = 6) -> str:
    """'' if `state_dict` fits `model`; otherwise which keys are missing/unexpected and which shapes differ, with hints."""
    own = model.state_dict()
    shape_diffs = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                   for k, v in state_dict.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    missing = [k for k in own if k not in state_dict] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    if not (shape_diffs or missing or unexpected):
        return ''

    def listing(title, items):
        if not items:
            return ''
        more = f' ... and {len(items) - max_listed} more' if len(items) > max_listed else ''
        return f'\n  {len(items)} {title}: ' + '; '.join(items[:max_listed]) + more

    hints = []
    ckpt_merged = any('lkb_reparam' in k for k in state_dict)
    model_merged = any('lkb_reparam' in k for k in own)
    if ckpt_merged and not model_merged:
        hints.append('the checkpoint is structurally re-parameterised: build the model with small_kernel_merged=True')
    if model_merged and not ckpt_merged and any('lkb_origin' in k for k in state_dict):
        hints.append('the checkpoint is in training form: build with small_kernel_merged=False '
                     '(and call structural_reparam() afterwards if you want the merged form)')
    stem_key = 'stem.0.conv.weight'
    if stem_key in state_dict and stem_key in own and state_dict[stem_key].shape[0] != own[stem_key].shape[0]:
        hints.append(f'the checkpoint has stem width {state_dict[stem_key].shape[0]} but the model '
                     f'{own[stem_key].shape[0]}: it belongs to another variant (31B: 128, 31L: 192, XL: 256)')
    if 'head.weight' in state_dict and 'head.weight' in own and \
            state_dict['head.weight'].shape[0] != own['head.weight'].shape[0]:
        hints.append(f"the checkpoint head has {state_dict['head.weight'].shape[0]} classes: build with that "
                     'num_classes, or drop head.* from the checkpoint and load with strict=False to fine-tune')
    return ('checkpoint does not match this RepLKNet:'
            + listing('shape mismatches', shape_diffs) + listing('missing keys', missing)
            + listing('unexpected keys', unexpected)
            + ''.join(f'\n  hint: {h}' for h in hints))


# --------------------------------------------------------------------------------------------------------------------
# Original factory functions (main.py --model RepLKNet-31B etc.)
# --------------------------------------------------------------------------------------------------------------------

_ARCHS = {
    'replknet_31b': dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(128, 256, 512, 1024),
                         small_kernel=5, dw_ratio=1),
    'replknet_31l': dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(192, 384, 768, 1536),
                         small_kernel=5, dw_ratio=1),
    'replknet_xl': dict(large_kernel_sizes=(27, 27, 27, 13), layers=(2, 2, 18, 2), channels=(256, 512, 1024, 2048),
                        small_kernel=None, dw_ratio=1.5),
}

REPLKNET_ALIASES = {'RepLKNet-31B': 'replknet_31b', 'RepLKNet-31L': 'replknet_31l', 'RepLKNet-XL': 'replknet_xl'}


def resolve_replknet_name(name: str) -> str:
    """Map an original model name ('RepLKNet-31B') or a timm name ('replknet_31b') to the timm name."""
    if name in _ARCHS:
        return name
    if name in REPLKNET_ALIASES:
        return REPLKNET_ALIASES[name]
    valid = ', '.join(list(REPLKNET_ALIASES) + list(_ARCHS))
    raise ValueError(f'unknown RepLKNet model {name!r}; valid names: {valid}')


def _create_from_arch(arch: str, drop_path_rate: float, num_classes: Optional[int], use_checkpoint: bool,
                      small_kernel_merged: bool, use_sync_bn: bool, **kwargs) -> RepLKNet:
    return RepLKNet(**_ARCHS[arch], drop_path_rate=drop_path_rate, num_classes=num_classes,
                    use_checkpoint=use_checkpoint, small_kernel_merged=small_kernel_merged,
                    use_sync_bn=use_sync_bn, **kwargs)


def create_RepLKNet31B(drop_path_rate=0.3, num_classes=1000, use_checkpoint=True, small_kernel_merged=False,
                       use_sync_bn=False, **kwargs) -> RepLKNet:
    """RepLKNet-31B with the original factory defaults (extra kwargs, e.g. out_indices, go to RepLKNet)."""
    return _create_from_arch('replknet_31b', drop_path_rate, num_classes, use_checkpoint, small_kernel_merged,
                             use_sync_bn, **kwargs)


def create_RepLKNet31L(drop_path_rate=0.3, num_classes=1000, use_checkpoint=True, small_kernel_merged=False,
                       use_sync_bn=False, **kwargs) -> RepLKNet:
    """RepLKNet-31L with the original factory defaults."""
    return _create_from_arch('replknet_31l', drop_path_rate, num_classes, use_checkpoint, small_kernel_merged,
                             use_sync_bn, **kwargs)


def create_RepLKNetXL(drop_path_rate=0.3, num_classes=1000, use_checkpoint=True, small_kernel_merged=False,
                      use_sync_bn=False, **kwargs) -> RepLKNet:
    """RepLKNet-XL with the original factory defaults (no small kernel, 1.5x depthwise width)."""
    return _create_from_arch('replknet_xl', drop_path_rate, num_classes, use_checkpoint, small_kernel_merged,
                             use_sync_bn, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# timm registration
# --------------------------------------------------------------------------------------------------------------------

def _cfg(**overrides) -> Dict:
    cfg = dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='stem.0.conv', classifier='head', paper_ids='arXiv:2203.06717',
        origin_url='https://github.com/DingXiaoH/RepLKNet-pytorch',
        notes=('weights are not downloaded automatically: fetch the released .pth and pass '
               "pretrained_cfg_overlay=dict(file='/path/to/weights.pth')",))
    cfg.update(overrides)
    return cfg


default_cfgs = generate_default_cfgs({
    'replknet_31b.in1k': _cfg(),
    'replknet_31b.in1k_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'replknet_31b.in22k_ft_in1k': _cfg(),
    'replknet_31b.in22k_ft_in1k_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'replknet_31b.in22k': _cfg(num_classes=21841),
    'replknet_31l.in22k_ft_in1k_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'replknet_31l.in22k': _cfg(num_classes=21841),
    # XL was trained on MegData73M with inception mean/std (0.5): evaluate with --imagenet_default_mean_and_std false
    'replknet_xl.megdata73m_ft_in1k_320': _cfg(input_size=(3, 320, 320), pool_size=(10, 10), crop_pct=1.0,
                                               mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
})


def _replknet_from_timm_kwargs(arch: str, in_chans: int = 3, **kwargs) -> RepLKNet:
    # kwargs override the variant's architecture (e.g. smaller channels/layers for experiments and tests).
    return RepLKNet(**{**_ARCHS[arch], **kwargs}, in_channels=in_chans)


def _create_replknet(arch: str, pretrained: bool = False, **kwargs) -> RepLKNet:
    """Build through timm (pretrained_cfg, features_only) after mapping this project's kwarg spellings."""
    kwargs.setdefault('drop_path_rate', 0.)
    if kwargs.get('out_indices') is not None and not kwargs.get('features_only'):
        kwargs.setdefault('num_classes', None)  # backbone mode; stops timm from filling in num_classes=1000
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if pretrained and not (overlay.get('file') or overlay.get('state_dict')):
        raise ValueError(f'{arch}: RepLKNet weights are not downloadable automatically. Download the released '
                         "checkpoint and pass pretrained_cfg_overlay=dict(file='/path/to/weights.pth').")
    return build_model_with_cfg(
        functools.partial(_replknet_from_timm_kwargs, arch), arch, pretrained,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)), **kwargs)


@register_model
def replknet_31b(pretrained=False, **kwargs) -> RepLKNet:
    """RepLKNet-31B: K (31, 29, 27, 13), layers (2, 2, 18, 2), C (128, 256, 512, 1024), small kernel 5."""
    return _create_replknet('replknet_31b', pretrained=pretrained, **kwargs)


@register_model
def replknet_31l(pretrained=False, **kwargs) -> RepLKNet:
    """RepLKNet-31L: as 31B with C (192, 384, 768, 1536)."""
    return _create_replknet('replknet_31l', pretrained=pretrained, **kwargs)


@register_model
def replknet_xl(pretrained=False, **kwargs) -> RepLKNet:
    """RepLKNet-XL: K (27, 27, 27, 13), C (256, 512, 1024, 2048), no small kernel, depthwise width 1.5x."""
    return _create_replknet('replknet_xl', pretrained=pretrained, **kwargs)
