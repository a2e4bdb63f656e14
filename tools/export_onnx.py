"""Export the re-parameterised (deploy-form) model to ONNX, check it against PyTorch with onnxruntime, time both.

    python tools/export_onnx.py --model unireplknet_t --resume runs/t/checkpoint-best.pth --out unireplknet_t.onnx
    python tools/export_onnx.py --model RepLKNet-31B --resume RepLKNet-31B_ImageNet-1K_224.pth --num_classes 1000 \\
        --out replknet_31b.onnx --input_size 224

Steps: build --model (this project's or timm's) with the --resume weights (a training-form checkpoint as main.py
writes it, a released file or a bare state_dict), re-parameterise it (timm.utils.reparameterize_model: UniRepLKNet's
reparameterize_unireplknet, RepLKNet's structural_reparam), export with torch.onnx (dynamic batch dimension: input
`images` (N, 3, H, W), output `logits` (N, classes)), then run the file with onnxruntime on random images and on real
photos (--images; the scikit-image photos by default) and fail when the largest |onnxruntime - PyTorch| difference
exceeds --tolerance times max(1, largest |logit|). Finally both runtimes are timed on CPU at --batch_size.
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('export', 'tools/export_onnx.py')

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from timm.utils import reparameterize_model  # noqa: E402

from named_model import (BUILTIN_IMAGES, add_use_ema_argument, build_named_model, load_images,  # noqa: E402
                         parse_model_kwargs)
from benchmarks.timing import interleaved_medians  # noqa: E402
from checkpoint import CheckpointError  # noqa: E402

INPUT_NAME, OUTPUT_NAME = 'images', 'logits'


def export_deployed(model, path, input_size):
    """Write `model` (already in deploy form, eval mode) to `path` with a dynamic batch dimension.

    A UniRepLKNet is exported with its release computation (a copy with unireplknet_cpu.py's fast paths off): those
    choose code paths by tensor size (GRN norms in batch chunks), which tracing would freeze at the example's batch.
    """
    if hasattr(model, 'set_fast_cpu_kernels'):
        model = copy.deepcopy(model)
        model.set_fast_cpu_kernels(False)
    example = torch.randn(2, 3, input_size, input_size)
    batch = torch.export.Dim('batch')
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    onnx.checker.check_model(path, full_check=True)


def onnx_session(path, threads=None):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def max_abs_difference(session, model, images):
    """(largest |onnxruntime - PyTorch| over the logits, largest |PyTorch logit|) for one batch."""
    with torch.no_grad():
        reference = model(images).float().numpy()
    output = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    if output.shape != reference.shape:
        raise AssertionError(f'onnxruntime output shape {output.shape} != PyTorch {reference.shape}')
    return float(np.abs(output - reference).max()), float(np.abs(reference).max())


def check_parity(session, model, batches, tolerance):
    """Compare every named batch; raise when a difference exceeds tolerance * max(1, |logits|). Returns the diffs."""
    differences = {}
    for name, images in batches.items():
        difference, scale = max_abs_difference(session, model, images)
        differences[name] = difference
        limit = tolerance * max(1.0, scale)
        print(f'{name}: max |onnxruntime - PyTorch| = {difference:.3e} (largest |logit| {scale:.3g}, '
              f'limit {limit:.3e}, batch {len(images)})')
        if not difference <= limit:
            raise AssertionError(f'ONNX output differs from PyTorch by {difference:.3e} on {name} images, more than '
                                 f'{limit:.3e}: the exported graph does not compute what the model does; do not deploy this file')
    return differences


def compare_throughput(session, model, batch_size, input_size, warmup=3, iterations=10):
    """CPU images per second of onnxruntime and of eager PyTorch (inference mode), same batch and threads, timed
    interleaved (median of `iterations` rounds), so outside load on a shared machine slows both alike."""
    images = torch.randn(batch_size, 3, input_size, input_size)
    feed = {INPUT_NAME: images.numpy()}

    def run_torch():
        with torch.inference_mode():
            model(images)

    medians = interleaved_medians({'onnxruntime': lambda: session.run([OUTPUT_NAME], feed),
                                   'pytorch_eager': run_torch}, warmup=warmup, repeats=iterations)
    speeds = {runtime: batch_size / seconds for runtime, seconds in medians.items()}
    print(f'CPU throughput (batch {batch_size}, {input_size}px, {torch.get_num_threads()} threads): onnxruntime '
          f'{speeds["onnxruntime"]:.1f} img/s, PyTorch eager {speeds["pytorch_eager"]:.1f} img/s '
          f'({speeds["onnxruntime"] / speeds["pytorch_eager"]:.2f}x)')
    return speeds


def get_args_parser():
    parser = argparse.ArgumentParser(description='Export the re-parameterised model to ONNX and check it')
    parser.add_argument('--model', required=True, help='model name (this project or timm)')
    parser.add_argument('--resume', default='', metavar='FILE',
                        help='weights (training form), e.g. checkpoint-best.pth')
    add_use_ema_argument(parser)
    parser.add_argument('--num_classes', default=1000, type=int, help='classes of the head (must fit --resume)')
    parser.add_argument('--model_overrides', default=None, metavar='YAML', help='extra constructor kwargs (dict)')
    parser.add_argument('--out', required=True, metavar='FILE.onnx')
    parser.add_argument('--input_size', default=224, type=int)
    parser.add_argument('--images', default=BUILTIN_IMAGES, metavar='DIR',
                        help=f'real images for the parity check: a folder or "{BUILTIN_IMAGES}" (built-in photos)')
    parser.add_argument('--num_images', default=8, type=int, help='real images in the parity check')
    parser.add_argument('--tolerance', default=1e-4, type=float,
                        help='largest allowed |onnxruntime - PyTorch| relative to max(1, largest |logit|)')
    parser.add_argument('--batch_size', default=8, type=int, help='batch of the throughput comparison')
    parser.add_argument('--timed_iters', default=10, type=int, help='timed batches per runtime (0: skip timing)')
    return parser


def main(args):
    kwargs = dict(num_classes=args.num_classes, **parse_model_kwargs(args.model_overrides))
    model = build_named_model(args.model, args.resume, use_ema=args.use_ema, **kwargs)
    deployed = reparameterize_model(model).eval()
    export_deployed(deployed, args.out, args.input_size)
    print(f'wrote {args.out} ({args.model}, re-parameterised, dynamic batch)')
    session = onnx_session(args.out)
    batches = {'random': torch.randn(3, 3, args.input_size, args.input_size),
               'real': torch.stack(load_images(args.images, args.num_images, args.input_size))}
    results = {'max_abs_diff': check_parity(session, deployed, batches, args.tolerance)}
    if args.timed_iters > 0:
        results['img_per_s'] = compare_throughput(session, deployed, args.batch_size, args.input_size,
                                                  iterations=args.timed_iters)
    return results


if __name__ == '__main__':
    try:
        main(get_args_parser().parse_args())
    except (AssertionError, CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f'error: {error}')
