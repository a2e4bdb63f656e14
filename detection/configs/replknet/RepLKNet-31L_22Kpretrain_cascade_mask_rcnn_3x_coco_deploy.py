# The `_base_` config with the small kernels merged into the large ones (re-parameterised), for checkpoints
# converted by `python -m replk_mm.reparameterize` and for ONNX/TensorRT export; no ImageNet initialisation.
_base_ = './RepLKNet-31L_22Kpretrain_cascade_mask_rcnn_3x_coco.py'
model = dict(backbone=dict(small_kernel_merged=True, pretrained=None))
