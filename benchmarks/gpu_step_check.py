"""The training step on a GPU: TF32 as main.py sets it, what it and bfloat16 AMP buy, and how often a step waits.

Run by `benchmarks/gpu_check.sh` (its "training step" section) on a CUDA machine, in about a minute; `--device cpu
--tiny` runs the same code on a tiny model on CPU (tests/test_benchmark_scripts.py does), where TF32 and the
synchronisation count do not apply.

1. TF32: main.configure_tf32 with --tf32 true (the default) and false, and the matmul precision torch then reports.
2. Speed: milliseconds per optimizer update of engine.train_one_epoch (main.py's loop: AdamW, EMA, a progress line
   every --print_freq updates; batches already on the device) in float32 with TF32 off, float32 with TF32 on, and
   AMP bfloat16 (`--use_amp true --amp_dtype bfloat16`, the fast path on Ampere and later), interleaved.
3. Synchronisations: CUDA's sync debug mode (torch.cuda.set_sync_debug_mode) reports every operation that makes the
   host wait for the device. A step should wait once (the non-finite / stop agreement before the optimizer step)
   and the epoch once more per progress line (the metrics of the interval, read together); more is an error.

    python benchmarks/gpu_step_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 \\
        --out gpu_step_check.md
"""
import argparse
import contextlib
import copy
import os
import sys
import warnings

import numpy as np
import torch
from timm.utils import ModelEmaV3

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402  (this folder)

import engine  # noqa: E402
import main  # noqa: E402

TINY_OVERRIDES = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "kernel_sizes": [[3], [7], [7], [3]]}'
SYNC_WARNING = 'called a synchronizing CUDA operation'


def quietly(function, *args):
    """function(*args) with its printed lines discarded."""
    with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet):
        return function(*args)


def train_epoch(model, model_ema, optimizer, batches, device, use_amp, print_freq):
    """engine.train_one_epoch over `batches` (one optimizer update each), its progress lines discarded."""
    updates = len(batches)
    quietly(lambda: engine.train_one_epoch(
        model, torch.nn.CrossEntropyLoss(), batches, optimizer, engine.Precision(device, use_amp, 'bfloat16'), device,
        0, steps_per_epoch=updates, lr_schedule=np.full(updates, 1e-4), model_ema=model_ema, print_freq=print_freq))


def make_variant(model, batches, device, tf32, use_amp, print_freq):
    """A callable training one epoch of its own copy of the model with TF32 `tf32` and AMP `use_amp`."""
    model = copy.deepcopy(model)
    model_ema = ModelEmaV3(model, decay=0.999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def epoch():
        quietly(main.configure_tf32, tf32, device)
        train_epoch(model, model_ema, optimizer, batches, device, use_amp, print_freq)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return epoch


def count_synchronisations(model, batches, device, print_freq):
    """Host waits for the device during one epoch, as CUDA's sync debug mode reports them."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model_ema = ModelEmaV3(model, decay=0.999)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            train_epoch(model, model_ema, optimizer, batches, device, False, print_freq)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    return sum(SYNC_WARNING in str(warning.message) for warning in caught)


def main_cli(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--tiny', action='store_true', help='a tiny UniRepLKNet (CPU smoke run)')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--img_size', type=int, default=224)
    parser.add_argument('--updates', type=int, default=20, help='optimizer updates per timed epoch')
    parser.add_argument('--print_freq', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--out', default='', help='markdown report to write')
    cli = parser.parse_args(argv)
    device = torch.device(cli.device)

    argv_model = ['--model', cli.model, '--nb_classes', '10'] + (['--model_overrides', TINY_OVERRIDES]
                                                                  if cli.tiny else [])
    torch.manual_seed(0)
    model = main.build_model(main.parse_args(argv_model)).to(device)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(cli.batch, 3, cli.img_size, cli.img_size, generator=generator).to(device),
                torch.randint(0, 10, (cli.batch,), generator=generator).to(device)) for _ in range(cli.updates)]

    lines = [f'{utc_now()}; {machine_summary()}; device {device}'
             + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else '')
             + f'; model {cli.model}{" (tiny)" if cli.tiny else ""}, batch {cli.batch} at '
             f'{cli.img_size}x{cli.img_size}, AdamW + EMA, a progress line every {cli.print_freq} updates.', '']
    failures = []
    if device.type == 'cuda':
        quietly(main.configure_tf32, False, device)
        off = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        main.configure_tf32(main.parse_args([]).tf32, device)
        on = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        lines += [f'TF32 by default (main.py --tf32 {main.parse_args([]).tf32}): float32 matmul precision {on[0]!r}, '
                  f'cuDNN allow_tf32 {on[1]}; with --tf32 false: {off[0]!r}, {off[1]}.', '']
        if on != ('high', True) or off != ('highest', False):
            failures.append(f'TF32 switches: default {on}, --tf32 false {off}')

    variants = {'float32, TF32 off (--tf32 false)': (False, False), 'float32, TF32 on (default)': (True, False),
                'AMP bfloat16 (--use_amp true --amp_dtype bfloat16)': (True, True)}
    medians = interleaved_medians({label: make_variant(model, batches, device, tf32, use_amp, cli.print_freq)
                                   for label, (tf32, use_amp) in variants.items()},
                                  warmup=cli.warmup, repeats=cli.repeats)
    reference = medians['float32, TF32 off (--tf32 false)']
    lines += [markdown_table(['training step', 'ms / update', 'speed-up over full float32'],
                             [[label, f'{1000 * seconds / cli.updates:.1f}', f'{reference / seconds:.2f}x']
                              for label, seconds in medians.items()]), '']
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        syncs = count_synchronisations(model, batches, device, cli.print_freq)
        printed = len(range(0, cli.updates, cli.print_freq)) + ((cli.updates - 1) % cli.print_freq != 0)
        expected = cli.updates + printed
        lines += [f'Host waits for the device in one epoch of {cli.updates} updates (sync debug mode): {syncs}; '
                  f'expected {expected} = one per update (the agreement before the optimizer step) + one per '
                  f'progress line ({printed}). Per update: {syncs / cli.updates:.2f}.', '']
        if syncs > expected:
            failures.append(f'{syncs} synchronisations in {cli.updates} updates, expected at most {expected}')
    report = '\n'.join(lines)
    print(report)
    if cli.out:
        with open(cli.out, 'w') as f:
            f.write(report + '\n')
    if failures:
        raise SystemExit('training step check failed: ' + '; '.join(failures))


if __name__ == '__main__':
    main_cli()
