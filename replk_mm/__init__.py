"""UniRepLKNet / RepLKNet in MMSegmentation 1.x and MMDetection 3.x: the glue shared by segmentation/ and detection/.

- backbones.py: the backbone classes (the root model files in backbone mode); needs torch + timm only.
- layer_decay.py: the layer-wise learning-rate decay rule and its MMEngine optimizer-wrapper constructor.
- checkpoints.py: weights-only loading of MMEngine checkpoints (an allow-list of MMEngine's globals).
- reparameterize.py: converts a trained segmentor/detector checkpoint for the `_deploy` configs (torch + mmengine).
- plain_training.py: options and AdamW loop of the examples without OpenMMLab (segmentation/smp_upernet.py,
  detection/torchvision_mask_rcnn.py); torch only.
- register_mmseg.py / register_mmdet.py (through registration.py): what the configs' `custom_imports` import.

The name is this repository's own: ConvNeXt, Swin and BEiT ship packages called `mmcv_custom` / `mmseg_custom`.
Nothing here is imported eagerly, so `import replk_mm.reparameterize` needs neither mmseg, mmdet nor mmcv.
"""
