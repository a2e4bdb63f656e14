# The `_base_` config with the backbone in deploy (re-parameterised) form, for checkpoints converted by
# `python -m replk_mm.reparameterize` and for ONNX/TensorRT export; no ImageNet initialisation.
_base_ = './casc_mask_rcnn_unireplknet_s_in1k_fpn_3x_coco.py'
model = dict(backbone=dict(deploy=True, init_cfg=None))
