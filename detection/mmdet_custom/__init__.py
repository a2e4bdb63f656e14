"""Registers the UniRepLKNet and RepLKNet backbones into MMDetection (3.x MODELS or 2.x BACKBONES).

Imported by the configs through `custom_imports`; needs the repository root, segmentation/ (for the shared
mmcv_custom package) and detection/ on PYTHONPATH.
"""
from mmcv_custom import register_backbones

try:
    from mmdet.registry import MODELS as _BACKBONE_REGISTRY  # MMDetection 3.x
except ImportError:
    from mmdet.models.builder import BACKBONES as _BACKBONE_REGISTRY  # MMDetection 2.x

register_backbones(_BACKBONE_REGISTRY)
