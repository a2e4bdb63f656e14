# upernet_unireplknet_s_in22k_640_160k_ade20k.py with the backbone in deploy (re-parameterised) form: for testing
# checkpoints converted by segmentation/reparameterize.py and for ONNX/TensorRT export; no ImageNet init.
_base_ = './upernet_unireplknet_s_in22k_640_160k_ade20k.py'
model = dict(backbone=dict(deploy=True, init_cfg=dict(type='Pretrained', checkpoint=None)))
