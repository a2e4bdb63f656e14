"""The path without OpenMMLab: segmentation/smp_upernet.py (segmentation-models-pytorch's UPerNet) and
detection/torchvision_mask_rcnn.py (torchvision's Mask R-CNN / Faster R-CNN + FPN) over a UniRepLKNet created by
timm with features_only, trained a few iterations on tiny generated ADE20K / COCO-format data."""
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, 'segmentation'), os.path.join(REPO, 'detection')]

import smp_upernet  # noqa: E402
import torchvision_mask_rcnn  # noqa: E402
from test_downstream_runs import make_ade20k, make_coco  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13, 3), (13,)))
TINY_ARGS = ['--model', 'unireplknet_n', '--model_kwargs', repr(TINY), '--batch_size', '2', '--workers', '0',
             '--warmup_iters', '1', '--lr', '1e-3', '--iters', '3']


def test_backbone_plugs_into_smp_upernet_and_torchvision_fpn(tmp_path):
    import unireplknet
    classifier = unireplknet.UniRepLKNet(num_classes=5, **TINY)
    torch.save({'model': classifier.state_dict()}, tmp_path / 'imagenet.pth')
    upernet = smp_upernet.build_upernet('unireplknet_n', 7, str(tmp_path / 'imagenet.pth'), **TINY).eval()
    assert torch.equal(upernet.encoder.model.stages[1][0].dwconv.lk_origin.weight,
                       classifier.stages[1][0].dwconv.lk_origin.weight)  # the ImageNet weights arrived
    with torch.no_grad():
        assert upernet(torch.randn(1, 3, 64, 64)).shape == (1, 7, 64, 64)
        fpn = torchvision_mask_rcnn.TimmBackboneWithFPN('unireplknet_n', out_channels=16, **TINY).eval()
        levels = fpn(torch.randn(1, 3, 64, 64))
    assert [(name, tuple(f.shape)) for name, f in levels.items()] == [
        ('0', (1, 16, 16, 16)), ('1', (1, 16, 8, 8)), ('2', (1, 16, 4, 4)), ('3', (1, 16, 2, 2)),
        ('pool', (1, 16, 1, 1))]
    with pytest.raises(ValueError, match='--arch'):
        torchvision_mask_rcnn.build_detector('retinanet', 'unireplknet_n', 3, **TINY)


@pytest.mark.slow
def test_smp_upernet_script_trains_and_reports_miou(tmp_path):
    data = make_ade20k(str(tmp_path / 'ade'))
    result = smp_upernet.main(['--data', data, '--size', '64', '64', '--output', str(tmp_path / 'upernet.pth')]
                              + TINY_ARGS)
    losses = result['losses']
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert 0 <= result['mIoU'] <= 1
    model = smp_upernet.build_upernet('unireplknet_n', 150, **TINY)
    model.load_state_dict(torch.load(tmp_path / 'upernet.pth'))


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['mask_rcnn', 'faster_rcnn'])
def test_torchvision_detector_script_trains_and_reports_coco_ap(tmp_path, arch):
    data = make_coco(str(tmp_path / 'coco'))
    result = torchvision_mask_rcnn.main([
        '--arch', arch, '--images', os.path.join(data, 'train2017'),
        '--annotations', os.path.join(data, 'annotations', 'instances_train2017.json'),
        '--val_images', os.path.join(data, 'val2017'),
        '--val_annotations', os.path.join(data, 'annotations', 'instances_val2017.json'),
        '--num_classes', '81', '--output', str(tmp_path / 'detector.pth'), '--detector_kwargs', repr(dict(
            min_size=64, max_size=96, rpn_post_nms_top_n_train=100, box_batch_size_per_image=32,
            box_detections_per_img=10))] + TINY_ARGS)
    assert len(result['losses']) == 3 and all(math.isfinite(x) for x in result['losses'])
    torch.manual_seed(0)  # the script's --seed: the same initial weights
    initial = torchvision_mask_rcnn.build_detector(arch, 'unireplknet_n', 81, **TINY).state_dict()
    trained = torch.load(tmp_path / 'detector.pth')
    assert trained.keys() == initial.keys() and not torch.equal(trained['roi_heads.box_predictor.cls_score.weight'],
                                                                initial['roi_heads.box_predictor.cls_score.weight'])
    assert set(result['AP']) == ({'bbox', 'segm'} if arch == 'mask_rcnn' else {'bbox'})
    assert all(0 <= ap <= 1 for ap in result['AP'].values())
