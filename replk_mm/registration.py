"""What replk_mm.register_mmseg / register_mmdet do, given their framework's MODELS registry."""
from .backbones import register_backbones
from .checkpoints import allow_mmengine_checkpoints
from .layer_decay import register_constructor


def register(models_registry):
    """Backbones into `models_registry`, the layer-decay constructor into MMEngine, MMEngine checkpoints loadable."""
    register_backbones(models_registry)
    register_constructor()
    allow_mmengine_checkpoints()
