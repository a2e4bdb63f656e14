"""Imported by the detection configs (`custom_imports`): registers the backbones into MMDetection 3.x's MODELS and
the layer-decay constructor into MMEngine, and lets torch >= 2.6 load MMEngine checkpoints weights-only."""
from mmdet.registry import MODELS

from .registration import register

register(MODELS)
