"""UniRepLKNet and RepLKNet as MMSegmentation / MMDetection backbones.

The classes import the model files at the repository root (unireplknet.py, replknet.py) instead of copying them,
so the backbone is the very model that `main.py` trains. They need neither mmseg, mmdet nor mmcv;
`replk_mm.register_mmseg` / `replk_mm.register_mmdet` register them into the framework's registry with
`register_backbones`.
"""
import logging

import checkpoint
import replknet
import unireplknet

_logger = logging.getLogger(__name__)


class UniRepLKNetBackbone(unireplknet.UniRepLKNet):
    """UniRepLKNet in backbone mode: a list of 4 LayerNorm-ed feature maps, (N, dims[i], H / 2**(i+2), W / 2**(i+2)).

    Defaults as in the original MM wrappers: SyncBN (the segmentor runs distributed) and no iGEMM large-kernel
    implementation (it is slow at the small per-GPU batches of detection and segmentation; pass
    attempt_use_lk_impl=True once it is installed). `init_cfg=dict(type='Pretrained', checkpoint=path)` loads an
    ImageNet checkpoint non-strictly (the classifier keys are reported as unused); checkpoint=None skips it.
    """

    def __init__(self, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0., layer_scale_init_value=1e-6,
                 kernel_sizes=None, deploy=False, with_cp=False, init_cfg=None, attempt_use_lk_impl=False,
                 use_sync_bn=True, out_indices=(0, 1, 2, 3)):
        super().__init__(in_chans=3, num_classes=None, depths=depths, dims=dims, drop_path_rate=drop_path_rate,
                         layer_scale_init_value=layer_scale_init_value, kernel_sizes=kernel_sizes, deploy=deploy,
                         with_cp=with_cp, init_cfg=init_cfg, attempt_use_lk_impl=attempt_use_lk_impl,
                         use_sync_bn=use_sync_bn, out_indices=out_indices)


class RepLKNetBackbone(replknet.RepLKNet):
    """RepLKNet in backbone mode: the outputs of the stages in `out_indices` (through the optional stage BN).

    Registered under the original name 'RepLKNet', so the original configs work unchanged. Takes the original
    downstream `pretrained=path` (or `init_cfg=dict(checkpoint=path)`): an ImageNet checkpoint loaded non-strictly.
    """

    def __init__(self, large_kernel_sizes, layers, channels, drop_path_rate, small_kernel, dw_ratio=1, ffn_ratio=4,
                 in_channels=3, num_classes=None, out_indices=(0, 1, 2, 3), use_checkpoint=False,
                 small_kernel_merged=False, use_sync_bn=True, norm_intermediate_features=False, pretrained=None,
                 init_cfg=None):
        super().__init__(large_kernel_sizes, layers, channels, drop_path_rate, small_kernel, dw_ratio=dw_ratio,
                         ffn_ratio=ffn_ratio, in_channels=in_channels, num_classes=num_classes,
                         out_indices=out_indices, use_checkpoint=use_checkpoint,
                         small_kernel_merged=small_kernel_merged, use_sync_bn=use_sync_bn,
                         norm_intermediate_features=norm_intermediate_features)
        self.pretrained = pretrained if pretrained is not None else (init_cfg or {}).get('checkpoint')
        self.init_weights()

    def init_weights(self, pretrained=None):
        """Load `pretrained` (or the constructor's checkpoint) non-strictly; shape mismatches are errors.

        MMSeg/MMDet call this again after building the whole model, so the checkpoint path is kept.
        """
        path = pretrained or self.pretrained
        if path is None:
            return
        state_dict = unireplknet.read_state_dict(path)  # unwraps 'model' / 'state_dict', strips 'module.'
        missing, unexpected = checkpoint.load_model_state(self, state_dict, strict=False, source=path)
        _logger.info('RepLKNet backbone loaded %s; missing keys: %s; unused checkpoint keys: %s',
                     path, missing, unexpected)


BACKBONES = {'UniRepLKNetBackbone': UniRepLKNetBackbone, 'RepLKNet': RepLKNetBackbone}


def register_backbones(registry):
    """Register both backbones into an MMEngine registry (mmseg's or mmdet's MODELS)."""
    for name, cls in BACKBONES.items():
        if name not in registry:
            registry.register_module(name=name, module=cls)
