"""Effective receptive field (ERF) of one or more models, as in RepLKNet's Appendix B and Table 10.

    python tools/erf.py --model unireplknet_t --model resnet101 --images skimage --num_images 13 \\
        --input_size 224 --out runs/erf                                   # CPU, built-in photos
    python tools/erf.py --model RepLKNet-31B --resume RepLKNet-31B_ImageNet-1K_224.pth \\
        --images /data/imagenet/val --num_images 50 --input_size 1024 --out runs/erf --device cuda

For each model (M = its last feature map, n x c x h' x w'; I = the n input images):
    P = max(d(sum_i sum_j M[i, j, h'//2, w'//2]) / dI, 0)
    A = log10(sum over images i and input channels j of P[i, j] + 1), divided by its maximum (so 0 <= A <= 1).
The area ratio r(t) is the area of the smallest square centred on the image centre whose A values sum to at least
t of all A values, divided by the image area (Table 10, t = 20/30/50/99%).

Outputs in --out: erf_<model>.npy (A), erf_<model>.png (heatmap), erf.png (all models side by side) and
erf_area_ratio.md (the table, also printed). Each image is processed on its own, so memory does not grow with
--num_images; the model runs in eval mode (BatchNorm uses its running statistics, as the paper's trained models).
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('analysis', 'tools/erf.py')

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from named_model import (BUILTIN_IMAGES, add_use_ema_argument, build_named_model, load_images,  # noqa: E402
                         parse_model_kwargs, resolve_model_name)
from checkpoint import CheckpointError  # noqa: E402

AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def last_feature_map(model, images):
    """The model's final feature map (n, c, h', w'): timm's forward_features, which this project's models share
    (timm models that return channels-last maps, e.g. Swin, declare output_fmt 'NHWC')."""
    features = model.forward_features(images)
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' and torch.is_tensor(features) and features.dim() == 4:
        features = features.permute(0, 3, 1, 2)
    if not (torch.is_tensor(features) and features.dim() == 4):
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f'{type(model).__name__}.forward_features returned {shape}, not an (n, c, h, w) feature map; '
                         'the ERF needs a convolutional feature map (token-based models are not supported)')
    return features


def positive_input_gradient(model, images):
    """P of Appendix B, eq. (1), summed over the batch and input channels: an (h, w) array."""
    images = images.clone().requires_grad_(True)
    features = last_feature_map(model, images)
    central_points = features[:, :, features.shape[2] // 2, features.shape[3] // 2]
    gradient, = torch.autograd.grad(central_points.sum(), images)
    return gradient.clamp(min=0).sum(dim=(0, 1)).detach().cpu().double().numpy()


def aggregated_contribution_scores(model, images, device='cpu', progress=True):
    """A of Appendix B, eq. (2), rescaled to [0, 1]: images is a sequence of (3, h, w) tensors."""
    total = None
    for image in tqdm(images, desc='ERF', unit='image', disable=not progress):
        scores = positive_input_gradient(model, image.unsqueeze(0).to(device))
        total = scores if total is None else total + scores
    log_scores = np.log1p(total) / np.log(10)  # log10(total + 1) without rounding small totals (untrained nets) to 0
    peak = log_scores.max()
    if peak <= 0:
        raise ValueError('every contribution score is zero: the central output does not depend on the input '
                         '(check the weights; a model whose blocks are all zero-initialised has no ERF)')
    return log_scores / peak


def centred_square_sums(scores):
    """For each half-width k, the sum of scores over the square of side 2k+1 centred at (h//2, w//2), clipped to the
    image; the last entry covers the whole image. Returns (sides, sums). Sums use an integral image (hand-written:
    numpy has no box-sum helper), so the search is O(h*w) even at 1024 x 1024."""
    height, width = scores.shape
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = scores.cumsum(axis=0).cumsum(axis=1)
    centre_y, centre_x = height // 2, width // 2
    half_widths = np.arange(max(height, width))
    top = np.clip(centre_y - half_widths, 0, height)
    bottom = np.clip(centre_y + half_widths + 1, 0, height)
    left = np.clip(centre_x - half_widths, 0, width)
    right = np.clip(centre_x + half_widths + 1, 0, width)
    sums = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    return 2 * half_widths + 1, sums


def high_contribution_area_ratio(scores, threshold):
    """Table 10's r: (side of the smallest centred square holding `threshold` of the total score)^2 / image area,
    with the square clipped to the image (so r <= 1)."""
    if not 0 < threshold <= 1:
        raise ValueError(f'threshold must be in (0, 1], got {threshold}')
    height, width = scores.shape
    sides, sums = centred_square_sums(scores)
    first = int(np.argmax(sums >= threshold * sums[-1] * (1 - 1e-12)))
    side = sides[first]
    return min(side, height) * min(side, width) / (height * width)


def area_ratio_table(scores_by_model, thresholds=AREA_THRESHOLDS):
    """Markdown table of r (%) per model and threshold, Table 10's layout."""
    header = '| model | ' + ' | '.join(f't = {threshold:.0%}' for threshold in thresholds) + ' |'
    lines = [header, '|---|' + '---:|' * len(thresholds)]
    for name, scores in scores_by_model.items():
        ratios = [high_contribution_area_ratio(scores, threshold) for threshold in thresholds]
        lines.append(f'| {name} | ' + ' | '.join(f'{ratio:.1%}' for ratio in ratios) + ' |')
    return '\n'.join(lines) + '\n'


def plot_heatmaps(scores_by_model, path):
    """The A matrices side by side, one colour scale [0, 1] (as the paper's Figure 1)."""
    count = len(scores_by_model)
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 4), squeeze=False)
    for axis, (name, scores) in zip(axes[0], scores_by_model.items()):
        image = axis.imshow(scores, cmap='RdYlGn', vmin=0, vmax=1)
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    figure.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(figure)


def file_label(name):
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name)


def model_labels(names, resumes):
    """One unique display name per --model (the checkpoint's file name is added when a model repeats)."""
    labels = []
    for name, resume in zip(names, resumes):
        label = name if names.count(name) == 1 or not resume else f'{name} ({os.path.basename(resume)})'
        labels.append(label if label not in labels else f'{label} #{len(labels) + 1}')
    return labels


def get_args_parser():
    parser = argparse.ArgumentParser(description='Effective receptive field (RepLKNet Appendix B / Table 10)')
    parser.add_argument('--model', action='append', required=True, metavar='NAME',
                        help='model name (this project or timm); repeat for several models side by side')
    parser.add_argument('--resume', action='append', default=None, metavar='FILE',
                        help='weights for each --model in order (repeat once per --model; "none" = random init)')
    add_use_ema_argument(parser)
    parser.add_argument('--model_overrides', default=None, metavar='YAML',
                        help='constructor kwargs for every model, e.g. \'{"num_classes": 100}\'')
    parser.add_argument('--images', default=BUILTIN_IMAGES, metavar='DIR',
                        help=f'folder of images, or "{BUILTIN_IMAGES}" for the photos that ship with scikit-image')
    parser.add_argument('--num_images', default=50, type=int, help='how many images (the paper: 50)')
    parser.add_argument('--input_size', default=1024, type=int, help='images are resized to this square')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser


def main(args):
    resumes = args.resume or ['none'] * len(args.model)
    if len(resumes) != len(args.model):
        raise SystemExit(f'error: {len(args.model)} --model but {len(resumes)} --resume; give one --resume per '
                         '--model (use "none" for random weights)')
    resumes = ['' if resume.lower() == 'none' else resume for resume in resumes]
    if args.num_images < 1:
        raise SystemExit(f'error: --num_images must be at least 1, got {args.num_images}')
    for name in args.model:  # before the images are read
        resolve_model_name(name)
    os.makedirs(args.out, exist_ok=True)
    images = load_images(args.images, args.num_images, args.input_size)
    kwargs = parse_model_kwargs(args.model_overrides)
    scores_by_model = {}
    for label, name, resume in zip(model_labels(args.model, resumes), args.model, resumes):
        model = build_named_model(name, resume, use_ema=args.use_ema, **kwargs).to(args.device)
        print(f'{label}: {len(images)} images at {args.input_size}x{args.input_size} on {args.device}')
        scores = aggregated_contribution_scores(model, images, args.device)
        scores_by_model[label] = scores
        np.save(os.path.join(args.out, f'erf_{file_label(label)}.npy'), scores)
        plot_heatmaps({label: scores}, os.path.join(args.out, f'erf_{file_label(label)}.png'))
    plot_heatmaps(scores_by_model, os.path.join(args.out, 'erf.png'))
    table = area_ratio_table(scores_by_model)
    with open(os.path.join(args.out, 'erf_area_ratio.md'), 'w') as f:
        f.write(f'High-contribution area ratio r ({len(images)} images from {args.images}, '
                f'{args.input_size}x{args.input_size})\n\n{table}')
    print(table)
    return scores_by_model


if __name__ == '__main__':
    try:
        main(get_args_parser().parse_args())
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f'error: {error}')
