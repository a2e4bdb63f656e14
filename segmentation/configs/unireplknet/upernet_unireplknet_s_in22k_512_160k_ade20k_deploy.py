# The `_base_` config with the backbone in deploy (re-parameterised) form, for checkpoints converted by
# `python -m replk_mm.reparameterize` and for ONNX/TensorRT export; no ImageNet initialisation.
_base_ = './upernet_unireplknet_s_in22k_512_160k_ade20k.py'
model = dict(backbone=dict(deploy=True, init_cfg=None))
