"""Imported by the segmentation configs (`custom_imports`): registers the backbones into MMSegmentation 1.x's MODELS
and the layer-decay constructor into MMEngine, and lets torch >= 2.6 load MMEngine checkpoints weights-only."""
from mmseg.registry import MODELS

from .registration import register

register(MODELS)
