"""Mask R-CNN / Faster R-CNN with FPN on COCO without OpenMMLab: torchvision's detectors over a UniRepLKNet from timm.

    python detection/torchvision_mask_rcnn.py --images data/coco/train2017 \
        --annotations data/coco/annotations/instances_train2017.json --model unireplknet_s \
        --checkpoint unireplknet_s_in1k_224_acc83.91.pth --iters 90000 --batch_size 16 --output mask_rcnn_s.pth

The backbone is the root `unireplknet.py` model created by timm with `features_only=True` (four LayerNorm-ed stage
outputs, strides 4-32) under torchvision's FeaturePyramidNetwork; the detector is torchvision's MaskRCNN (or
FasterRCNN with --arch faster_rcnn) with its defaults (5 FPN levels, RoIAlign 7/14, images resized to
800/1333; --detector_kwargs changes them). Data: any COCO-format folder through torchvision's CocoDetection
(pycocotools), no random augmentation. Training: AdamW with a linear warm-up, then constant. Evaluation
(--val_images/--val_annotations): COCO box (and mask) AP with pycocotools' COCOeval. For the papers' Cascade Mask
R-CNN numbers use the MMDetection configs (detection/README.md).
"""
import argparse
import ast
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('dense', 'detection/torchvision_mask_rcnn.py', modules=('pycocotools',))

import numpy as np  # noqa: E402
import pycocotools.mask  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from torchvision.models.detection import FasterRCNN, MaskRCNN  # noqa: E402
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import unireplknet  # noqa: E402,F401  (registers the unireplknet_* models with timm)
from replk_mm.plain_training import add_training_arguments, train_iterations  # noqa: E402

DETECTORS = dict(mask_rcnn=MaskRCNN, faster_rcnn=FasterRCNN)


class TimmBackboneWithFPN(torch.nn.Module):
    """A timm `features_only` model under an FPN (+ max-pooled extra level), as torchvision's detectors expect:
    forward returns an OrderedDict '0'..'3', 'pool' of `out_channels`-wide maps."""

    def __init__(self, model_name, out_channels=256, **model_kwargs):
        super().__init__()
        self.body = timm.create_model(model_name, features_only=True, **model_kwargs)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(collections.OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(arch, model_name, num_classes, checkpoint=None, detector_kwargs=None, **model_kwargs):
    """torchvision's `arch` ('mask_rcnn' / 'faster_rcnn') on `model_name`; `checkpoint` is an ImageNet checkpoint of
    that model, loaded non-strictly. num_classes counts the background (COCO's category ids 1..90: 91);
    detector_kwargs go to torchvision's MaskRCNN / FasterRCNN (min_size, box_batch_size_per_image, ...)."""
    if arch not in DETECTORS:
        raise ValueError(f'--arch must be one of {sorted(DETECTORS)}, got {arch!r}')
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint) if checkpoint else None
    backbone = TimmBackboneWithFPN(model_name, init_cfg=init_cfg, **model_kwargs)
    return DETECTORS[arch](backbone, num_classes=num_classes, **(detector_kwargs or {}))


def coco_dataset(images, annotations, with_masks):
    """COCO-format images + instances json as (image tensor in [0, 1], target dict) pairs, via torchvision."""
    dataset = torchvision.datasets.CocoDetection(
        images, annotations, transforms=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    keys = ('image_id', 'boxes', 'labels') + (('masks',) if with_masks else ())
    return torchvision.datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=keys)


def collate(batch):
    return tuple(zip(*batch))


def coco_average_precision(model, dataset, batch_size):
    """COCO AP (box, and mask for Mask R-CNN) of `model` on `dataset` with pycocotools' COCOeval."""
    model.eval()
    detections = []
    with torch.no_grad():
        for images, targets in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            for output, target in zip(model(list(images)), targets):
                for i, (box, score, label) in enumerate(zip(output['boxes'], output['scores'], output['labels'])):
                    x1, y1, x2, y2 = box.tolist()
                    detection = dict(image_id=int(target['image_id']), category_id=int(label), score=float(score),
                                     bbox=[x1, y1, x2 - x1, y2 - y1])
                    if 'masks' in output:
                        mask = np.asfortranarray((output['masks'][i, 0] > 0.5).numpy().astype(np.uint8))
                        detection['segmentation'] = pycocotools.mask.encode(mask)
                        detection['segmentation']['counts'] = detection['segmentation']['counts'].decode()
                    detections.append(detection)
    ground_truth = dataset.coco
    results = {}
    for kind in ('bbox', 'segm') if isinstance(model, MaskRCNN) else ('bbox',):
        if not detections:
            results[kind] = 0.0
            continue
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        results[kind] = float(evaluation.stats[0])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', required=True, help='training image folder')
    parser.add_argument('--annotations', required=True, help='training instances json (COCO format)')
    parser.add_argument('--val_images', help='validation image folder (with --val_annotations: evaluate)')
    parser.add_argument('--val_annotations', help='validation instances json')
    parser.add_argument('--arch', default='mask_rcnn', choices=sorted(DETECTORS))
    parser.add_argument('--num_classes', type=int, default=91, help='including the background (COCO: 91)')
    parser.add_argument('--detector_kwargs', type=ast.literal_eval, default={},
                        help="arguments of torchvision's MaskRCNN / FasterRCNN as a Python dict, "
                             "e.g. \"{'min_size': 800, 'box_batch_size_per_image': 512}\"")
    add_training_arguments(parser, iters=90000, warmup_iters=500)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = build_detector(args.arch, args.model, args.num_classes, args.checkpoint, args.detector_kwargs,
                           **args.model_kwargs)
    with_masks = args.arch == 'mask_rcnn'
    loader = torch.utils.data.DataLoader(
        coco_dataset(args.images, args.annotations, with_masks), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, collate_fn=collate, generator=torch.Generator().manual_seed(args.seed))
    losses = train_iterations(model, loader, lambda net, batch: sum(net(list(batch[0]), list(batch[1])).values()),
                              args)
    result = dict(losses=losses)
    if args.val_images and args.val_annotations:
        result['AP'] = coco_average_precision(
            model, coco_dataset(args.val_images, args.val_annotations, with_masks), args.batch_size)
        print(f"validation AP: {result['AP']}")
    if args.output:
        torch.save(model.state_dict(), args.output)
    return result


if __name__ == '__main__':
    main()
