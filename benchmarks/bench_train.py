"""End-to-end training throughput of main.py's loop, data loading included.

Runs engine.train_one_epoch -- the loop main.py runs -- on the objects main.py builds (options parsed
by main.parse_args, datasets.build_dataset with its seeded augmentation, a DataLoader with main's
settings, main.build_model, optim_factory.create_optimizer, main.build_mixup/build_criterion) for
two data sources:

* DIGITS: scikit-learn's bundled digits, in memory (augmentation + step, no decoding);
* a JPEG ImageFolder that this script writes to a temporary folder (decode + RandAugment +
  random erasing + step, as for ImageNet).

The loader is wrapped so that the time the loop waits for each batch is recorded: the report gives
images/s over the timed iterations (after warm-up iterations), the share of that wall time spent
waiting for data, and the speed of the loader alone (no model) for comparison.

    python benchmarks/bench_train.py --write_markdown BENCHMARKS.md
    python benchmarks/bench_train.py --model unireplknet_t --device cuda --batch_size 128 --num_workers 8 \
        --folder_input_size 224 --folder_image_size 320 --timed_iters 20
"""
import argparse
import os
import re
import shlex
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import main  # noqa: E402
from datasets import build_dataset, collate_skipping_corrupt  # noqa: E402
from engine import Precision, train_one_epoch  # noqa: E402
from optim_factory import cosine_scheduler, create_optimizer  # noqa: E402
from timing import machine_summary, markdown_table, utc_now  # noqa: E402  (this folder is sys.path[0])

SECTION_HEADING = '### Training throughput (`bench_train.py`)'


class TimedLoader:
    """Iterates a DataLoader and records, per batch, when it was requested and when it arrived."""

    def __init__(self, loader):
        self.loader = loader
        self.requested, self.arrived = [], []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            self.requested.append(time.perf_counter())
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.arrived.append(time.perf_counter())
            yield batch

    def timed_totals(self, warmup_iters):
        """(seconds per iteration summed, seconds waiting for data summed) after `warmup_iters`.

        An iteration runs from one batch request to the next, so it covers the wait and the step.
        """
        requested = np.array(self.requested)
        arrived = np.array(self.arrived)
        iteration = requested[1:] - requested[:-1]
        waiting = arrived - requested[:-1]
        return iteration[warmup_iters:].sum(), waiting[warmup_iters:].sum()


def write_jpeg_folder(root, num_classes, images_per_class, image_size):
    """Photo-sized JPEGs (smooth colour fields plus noise, quality 90), one folder per class."""
    rng = np.random.default_rng(0)
    height, width = image_size, image_size * 4 // 3
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    for class_index in range(num_classes):
        folder = os.path.join(root, f'class_{class_index:03d}')
        os.makedirs(folder)
        for image_index in range(images_per_class):
            phase = rng.uniform(0, 2 * np.pi, 3)
            field = np.stack([np.sin(6 * xs + 4 * ys + p) for p in phase], axis=-1)
            pixels = 127 + 100 * field + rng.normal(0, 12, field.shape)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                os.path.join(folder, f'{image_index}.jpg'), quality=90)


def parse_training_args(cli, data_set, data_path, input_size, nb_classes, num_workers):
    """main.py's options for this run, with every other option at main.py's default."""
    argv = ['--model', cli.model, '--data_set', data_set, '--data_path', data_path,
            '--input_size', str(input_size), '--nb_classes', str(nb_classes),
            '--batch_size', str(cli.batch_size), '--num_workers', str(num_workers),
            '--device', cli.device, '--epochs', '1', '--warmup_epochs', '0',
            '--use_amp', str(cli.use_amp).lower(), '--amp_dtype', cli.amp_dtype]
    if cli.config:
        argv = ['--config', cli.config] + argv
    return main.parse_args(argv)


def build_loader(args, num_images):
    dataset, args.nb_classes = build_dataset(is_train=True, args=args)
    if len(dataset) < num_images:
        raise ValueError(f"{args.data_set} has {len(dataset)} training images, fewer than the "
                         f"{num_images} needed; lower --warmup_iters/--timed_iters/--batch_size.")
    dataset.set_epoch(0)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:num_images].tolist()
    return torch.utils.data.DataLoader(
        dataset, sampler=order, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and args.device.startswith('cuda'), drop_last=True,
        collate_fn=collate_skipping_corrupt if args.skip_corrupt_images else None)


def loader_alone_images_per_second(loader):
    start = time.perf_counter()
    images = sum(len(targets) for _, targets in loader)
    return images / (time.perf_counter() - start)


def measure(args, cli):
    """Images/s of the training loop, share of its time spent waiting for data, loader-alone images/s."""
    device = torch.device(args.device)
    num_images = (cli.warmup_iters + cli.timed_iters) * args.batch_size
    loader = build_loader(args, num_images)
    model = main.build_model(args).to(device)
    optimizer = create_optimizer(args, model)
    mixup_fn = main.build_mixup(args)
    criterion = main.build_criterion(args, mixup_fn)
    timed_loader = TimedLoader(loader)
    train_one_epoch(model, criterion, timed_loader, optimizer, Precision(device, args.use_amp, args.amp_dtype),
                    device, 0, steps_per_epoch=len(loader), lr_schedule=cosine_scheduler(args.lr, args.min_lr, 1, len(loader)),
                    mixup_fn=mixup_fn, channels_last=args.channels_last, print_freq=len(loader))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds, waiting = timed_loader.timed_totals(cli.warmup_iters)
    images = cli.timed_iters * args.batch_size
    return images / seconds, waiting / seconds, loader_alone_images_per_second(loader)


def replace_section(path, body, heading=SECTION_HEADING):
    """Put `body` under `heading` in the markdown file, replacing that section only
    (up to the next '## ' or '### ' heading); other sections are left exactly as they are."""
    text = open(path).read() if os.path.exists(path) else ''
    section = f'{heading}\n\n{body.strip()}\n'
    if heading in text:
        before, after = text.split(heading, 1)
        match = re.search(r'\n#{2,3} ', after)
        rest = after[match.start() + 1:] if match else ''
        text = before + section + ('\n' + rest if rest else '')
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + section
    with open(path, 'w') as f:
        f.write(text)


def main_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--config', default='', help='optional main.py YAML whose options apply first')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--num_workers', type=int, nargs='+', default=[0, 2],
                        help='DataLoader worker counts to measure (0 = load in the training process)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch intra-op threads')
    parser.add_argument('--use_amp', action='store_true')
    parser.add_argument('--amp_dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    parser.add_argument('--digits_input_size', type=int, default=32)
    parser.add_argument('--folder_input_size', type=int, default=128)
    parser.add_argument('--folder_image_size', type=int, default=192, help='short side of the generated JPEGs')
    parser.add_argument('--folder_classes', type=int, default=10)
    parser.add_argument('--warmup_iters', type=int, default=2)
    parser.add_argument('--timed_iters', type=int, default=8)
    parser.add_argument('--write_markdown', default='', help='markdown file whose section to (re)write')
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)

    load_before = os.getloadavg()[0]
    rows = []
    for workers in cli.num_workers:
        digits_args = parse_training_args(cli, 'DIGITS', '', cli.digits_input_size, 10, workers)
        rows.append(('DIGITS (in memory)', cli.digits_input_size, workers, *measure(digits_args, cli)))
    with tempfile.TemporaryDirectory() as root:
        per_class = -(-(cli.warmup_iters + cli.timed_iters) * cli.batch_size // cli.folder_classes)
        write_jpeg_folder(root, cli.folder_classes, per_class, cli.folder_image_size)
        for workers in cli.num_workers:
            folder_args = parse_training_args(cli, 'image_folder', root, cli.folder_input_size,
                                              cli.folder_classes, workers)
            rows.append((f'JPEG ImageFolder ({cli.folder_image_size}px short side, decoded)',
                         cli.folder_input_size, workers, *measure(folder_args, cli)))

    command = 'python benchmarks/bench_train.py ' + shlex.join(sys.argv[1:])
    table = markdown_table(
        ['data', 'input', 'DataLoader workers', 'train loop img/s', 'time waiting for data', 'loader alone img/s'],
        [[name, f'{size}x{size}', workers, f'{speed:.1f}', f'{share:.0%}', f'{alone:.1f}']
         for name, size, workers, speed, share, alone in rows])
    report = (f"`{command}`\n\n{utc_now()}; {machine_summary()}; model {cli.model}, batch {cli.batch_size}, "
              f"device {cli.device}, "
              f"{'amp ' + cli.amp_dtype if cli.use_amp else 'float32'}; main.py defaults otherwise "
              f"(RandAugment, random erasing 0.25, mixup 0.8 / cutmix 1.0, AdamW); {cli.timed_iters} timed "
              f"iterations after {cli.warmup_iters} warm-up. 1-minute load average {load_before:.1f} before and "
              f"{os.getloadavg()[0]:.1f} after the run (other work on the machine slows every number).\n\n{table}\n\n"
              "train loop img/s: images per second of engine.train_one_epoch (main.py's loop: wait for the "
              "batch, forward, backward, AdamW step); time waiting for data: share of that time spent in "
              "next(loader); loader alone: the same DataLoader iterated without a model.\n")
    print(report)
    if cli.write_markdown:
        replace_section(cli.write_markdown, report)


if __name__ == '__main__':
    main_cli()
