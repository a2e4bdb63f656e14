"""Registers the UniRepLKNet and RepLKNet backbones into MMSegmentation (1.x MODELS or 0.x BACKBONES).

Imported by the configs through `custom_imports`; needs the repository root and segmentation/ on PYTHONPATH.
"""
from mmcv_custom import register_backbones

try:
    from mmseg.registry import MODELS as _BACKBONE_REGISTRY  # MMSegmentation 1.x
except ImportError:
    from mmseg.models.builder import BACKBONES as _BACKBONE_REGISTRY  # MMSegmentation 0.x

register_backbones(_BACKBONE_REGISTRY)
