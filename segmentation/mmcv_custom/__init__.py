"""Framework-independent pieces shared by segmentation/ and detection/: the backbone wrappers, the layer-wise
learning-rate decay optimizer constructor (registered when MMCV 1.x or MMEngine is installed) and the checkpoint
re-parameterisation used by the reparameterize.py scripts."""
from . import layer_decay_optimizer_constructor  # noqa: F401  (registers the constructor when mmcv/mmengine exist)
from .backbones import BACKBONES, RepLKNetBackbone, UniRepLKNetBackbone, register_backbones  # noqa: F401
