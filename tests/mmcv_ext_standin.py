"""Test-only stand-in for `mmcv._ext`, the compiled ops that mmcv-lite 2.1.0 lacks (see segmentation/README.md).

`import mmseg.models` / `import mmdet.models` import every module of `mmcv.ops`, and each of those asks `mmcv._ext`
for its kernels by name at import time. Here every name resolves: `nms` and `roi_align_forward/backward` (all that
UperNet and Cascade Mask R-CNN call) run torchvision's implementations; any other op raises NotImplementedError
naming itself. Installed only where the real `mmcv._ext` is missing (full mmcv wins), and only by the tests: users
install full mmcv 2.1 (segmentation/README.md, "Install").
"""
import importlib.machinery
import importlib.util
import sys
import types

import torch
import torchvision


def nms(boxes, scores, iou_threshold, offset=0):
    if offset != 0:
        raise NotImplementedError('the mmcv._ext stand-in implements nms with offset=0 only (torchvision.ops.nms)')
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def _check_average_pooling(pool_mode):
    if pool_mode != 1:
        raise NotImplementedError("the mmcv._ext stand-in implements roi_align with pool_mode='avg' only")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    """mmcv's signature, writing into `output`; both treat sampling_ratio <= 0 as adaptive."""
    _check_average_pooling(pool_mode)
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                           sampling_ratio, aligned))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned):
    """RoIAlign is linear in its input, so its gradient is the vector-Jacobian product at any input (zeros here)."""
    _check_average_pooling(pool_mode)
    with torch.enable_grad():
        x = torch.zeros_like(grad_input, requires_grad=True)
        out = torchvision.ops.roi_align(x, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio,
                                        aligned)
        grad_input.copy_(torch.autograd.grad(out, x, grad_output)[0])


class _StandInExtension(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def not_implemented(*args, **kwargs):
            raise NotImplementedError(f'mmcv op {name!r} needs full mmcv (tests use a stand-in for mmcv._ext)')
        return not_implemented


def install():
    """Put the stand-in at sys.modules['mmcv._ext'] unless a real mmcv._ext is importable."""
    if 'mmcv._ext' in sys.modules or importlib.util.find_spec('mmcv._ext') is not None:
        return
    extension = _StandInExtension('mmcv._ext', __doc__)
    extension.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', loader=None)  # MMEngine's collect_env asks
    for function in (nms, roi_align_forward, roi_align_backward):
        setattr(extension, function.__name__, function)
    sys.modules['mmcv._ext'] = extension
