"""UperNet on ADE20K without OpenMMLab: segmentation-models-pytorch's UPerNet over a UniRepLKNet from timm.

    python segmentation/smp_upernet.py --data data/ade/ADEChallengeData2016 --model unireplknet_s \
        --checkpoint unireplknet_s_in1k_224_acc83.91.pth --iters 160000 --batch_size 16 --output upernet_s.pth

The encoder is the root `unireplknet.py` model created by timm with `features_only=True` (smp's `tu-` encoders):
its four LayerNorm-ed stage outputs, strides 4-32, the same backbone the MMSegmentation configs use. Training is
the recipe of segmentation/configs (AdamW lr 1e-4, wd 0.05, 1500 linear warm-up iterations, poly decay) without the
layer-wise decay and the random resize/crop/flip/photometric augmentation: images are resized to --size, so a run
is deterministic. For the papers' numbers use the MMSegmentation configs (segmentation/README.md).
"""
import argparse
import glob
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('dense', 'segmentation/smp_upernet.py', modules=('segmentation_models_pytorch',))

import numpy as np  # noqa: E402
import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

import unireplknet  # noqa: E402,F401  (registers the unireplknet_* models with timm)
from replk_mm.plain_training import add_training_arguments, train_iterations  # noqa: E402

IGNORE_INDEX = 255
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ADE20KFolder(torch.utils.data.Dataset):
    """ADEChallengeData2016/{images,annotations}/{training,validation}: label 0 is 'other' (ignored), 1..150 the
    classes (stored as 0..149), as MMSegmentation's reduce_zero_label."""

    def __init__(self, root, split, size):
        self.images = sorted(glob.glob(os.path.join(root, 'images', split, '*.jpg')))
        if not self.images:
            raise FileNotFoundError(f'no images in {os.path.join(root, "images", split)}: --data must be the '
                                    'ADEChallengeData2016 folder (images/ and annotations/ inside)')
        self.size = size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        path = self.images[index]
        label_path = path.replace(f'{os.sep}images{os.sep}', f'{os.sep}annotations{os.sep}')[:-len('.jpg')] + '.png'
        image = torch.from_numpy(np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 255).permute(2, 0, 1)
        image = F.interpolate(image[None], size=self.size, mode='bilinear', align_corners=False)[0]
        image = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        labels = torch.from_numpy(np.asarray(Image.open(label_path), dtype=np.int64))
        labels = F.interpolate(labels[None, None].float(), size=self.size, mode='nearest')[0, 0].long() - 1
        labels[labels < 0] = IGNORE_INDEX
        return image, labels


def build_upernet(model_name, num_classes, checkpoint=None, **model_kwargs):
    """smp.UPerNet with the timm model `model_name` (features_only) as encoder; `checkpoint` is an ImageNet
    checkpoint of that model, loaded non-strictly (the classifier keys are reported as unused)."""
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint) if checkpoint else None
    return smp.UPerNet(encoder_name=f'tu-{model_name}', encoder_weights=None, classes=num_classes,
                       init_cfg=init_cfg, **model_kwargs)


def mean_iou(model, loader, num_classes):
    """Dataset-level IoU per class (classes never seen nor predicted left out), averaged, as MMSegmentation's mIoU."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    totals = None
    with torch.no_grad():
        for images, labels in loader:
            predictions = model(images).argmax(1)
            stats = smp.metrics.get_stats(predictions, labels, mode='multiclass', num_classes=num_classes,
                                          ignore_index=IGNORE_INDEX)
            stats = torch.stack([s.sum(0) for s in stats])
            totals = stats if totals is None else totals + stats
    tp, fp, fn, tn = totals
    return smp.metrics.iou_score(tp, fp, fn, tn, reduction='none', zero_division=math.nan).nanmean().item()


def majority_class_miou(train_set, val_loader, num_classes):
    """mIoU of the baseline that predicts the training set's most frequent class everywhere: what a model must beat
    to have learnt more than the class frequencies."""
    counts = torch.zeros(num_classes + 1, dtype=torch.long)
    for _, labels in train_set:
        counts += torch.bincount(labels.clamp(max=num_classes).flatten(), minlength=num_classes + 1)
    majority = int(counts[:num_classes].argmax())
    return mean_iou(lambda images: F.one_hot(torch.full(images.shape[-2:], majority).expand(len(images), -1, -1),
                                             num_classes).permute(0, 3, 1, 2), val_loader, num_classes)


def poly_decay(iteration, iterations, warmup):
    """The learning-rate factor after the warm-up: linear (poly, power 1) decay to 0 at the last iteration."""
    return 1 - (iteration - warmup) / max(1, iterations - warmup)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', required=True, help='the ADEChallengeData2016 folder')
    parser.add_argument('--num_classes', type=int, default=150)
    parser.add_argument('--size', type=int, nargs=2, default=(512, 512), help='training and test image size (H W)')
    add_training_arguments(parser, iters=160000, warmup_iters=1500)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = build_upernet(args.model, args.num_classes, args.checkpoint, **args.model_kwargs)
    train_set = ADE20KFolder(args.data, 'training', tuple(args.size))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=len(train_set) > args.batch_size,
        num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    losses = train_iterations(
        model, loader, lambda net, batch: F.cross_entropy(net(batch[0]), batch[1], ignore_index=IGNORE_INDEX), args,
        lambda i: poly_decay(i, args.iters, args.warmup_iters))
    val_loader = torch.utils.data.DataLoader(ADE20KFolder(args.data, 'validation', tuple(args.size)),
                                             batch_size=args.batch_size, num_workers=args.workers)
    result = dict(losses=losses, mIoU=mean_iou(model, val_loader, args.num_classes),
                  majority_mIoU=majority_class_miou(train_set, val_loader, args.num_classes))
    print(f"validation mIoU {result['mIoU']:.4f} (majority-class baseline {result['majority_mIoU']:.4f})")
    if args.output:
        torch.save(model.state_dict(), args.output)
    return result


if __name__ == '__main__':
    main()
