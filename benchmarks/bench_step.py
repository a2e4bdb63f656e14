"""A/B timing of the training step (engine.train_one_epoch) against engine.py at another git revision, one process.

Both engines train their own copy of the same model (same weights, AdamW, EMA, the same in-memory batches, no data
loading) for --updates optimizer updates per timed call, interleaved (benchmarks/timing.py), so outside load slows
both alike. The reported time is per optimizer update, from the first batch to the end-of-epoch averages. Use it after
changing engine.py: the step's own overhead (logging, host reads, agreement) shows best on a small model.

    python benchmarks/bench_step.py --before 93f9432 --write_markdown BENCHMARKS.md
    python benchmarks/bench_step.py --before HEAD~1 --model_overrides '{"depths": [2, 2, 6, 2]}' --input_size 64
"""
import argparse
import contextlib
import copy
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import torch
from timm.utils import ModelEmaV3

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import engine  # noqa: E402
import main  # noqa: E402
from bench_train import replace_section  # noqa: E402  (this folder is sys.path[0])
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402

SECTION_HEADING = '### Training step, engine A/B (`bench_step.py`)'


def engine_at_revision(revision):
    """engine.py as committed at `revision`, imported as its own module (it uses the working tree's helpers)."""
    result = subprocess.run(['git', 'show', f'{revision}:engine.py'], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'--before {revision}: git cannot show engine.py there ({result.stderr.strip()}).')
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
        f.write(result.stdout)
    spec = importlib.util.spec_from_file_location(f'engine_at_{revision}', f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module


def make_epoch(engine_module, model, batches, cli):
    """A callable that trains one epoch of len(batches) // update_freq updates with `engine_module`."""
    model = copy.deepcopy(model)
    model_ema = ModelEmaV3(model, decay=0.999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    precision = engine_module.Precision('cpu', cli.use_amp, 'bfloat16')
    updates = len(batches) // cli.update_freq
    schedule = np.full(updates, 1e-4)

    def epoch():
        with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet):
            engine_module.train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches, optimizer, precision,
                                          torch.device('cpu'), 0, steps_per_epoch=updates, lr_schedule=schedule,
                                          update_freq=cli.update_freq, model_ema=model_ema,
                                          print_freq=cli.print_freq)
    return epoch


def main_cli(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--before', required=True, help='git revision whose engine.py is the baseline')
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--model_overrides', help='YAML/JSON constructor kwargs (default: one block per stage)',
                        default='{"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], '
                                '"kernel_sizes": [[3], [7], [7], [3]]}')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--input_size', type=int, default=32)
    parser.add_argument('--updates', type=int, default=20, help='optimizer updates per timed call')
    parser.add_argument('--update_freq', type=int, default=1)
    parser.add_argument('--print_freq', type=int, default=10)
    parser.add_argument('--use_amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--write_markdown', default='', help='markdown file whose section to (re)write')
    cli = parser.parse_args(argv)
    torch.set_num_threads(cli.threads)

    baseline = engine_at_revision(cli.before)
    torch.manual_seed(0)
    model = main.build_model(main.parse_args(['--model', cli.model, '--model_overrides', cli.model_overrides,
                                              '--nb_classes', '10']))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(cli.batch_size, 3, cli.input_size, cli.input_size, generator=generator),
                torch.randint(0, 10, (cli.batch_size,), generator=generator))
               for _ in range(cli.updates * cli.update_freq)]
    load_before = os.getloadavg()[0]
    # Each round runs before, after, after, before (two copies each): on a loaded machine the slot in the round
    # matters (the first one measured slower in A/A runs), and this order gives both engines the same slots.
    engines = {f'engine.py at {cli.before}': baseline, 'working tree': engine}
    slots = interleaved_medians({(label, copy_index): make_epoch(engines[label], model, batches, cli)
                                 for copy_index, labels in enumerate([list(engines), list(engines)[::-1]])
                                 for label in labels}, warmup=cli.warmup, repeats=cli.repeats)
    medians = {label: (slots[(label, 0)] + slots[(label, 1)]) / 2 for label in engines}
    reference = medians[f'engine.py at {cli.before}']
    table = markdown_table(['engine', 'ms / update', 'relative to before'],
                           [[label, f'{1000 * seconds / cli.updates:.2f}', f'{seconds / reference:.3f}x']
                            for label, seconds in medians.items()])
    command = 'python benchmarks/bench_step.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
    report = (f"`{command}`\n\n{utc_now()}; {machine_summary()}, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}; model {cli.model} {cli.model_overrides}, batch "
              f"{cli.batch_size} at {cli.input_size}x{cli.input_size}, update_freq {cli.update_freq}, "
              f"{'bfloat16 autocast' if cli.use_amp else 'float32'}, AdamW + EMA, a progress line every "
              f"{cli.print_freq} updates; per engine the mean of two medians over {cli.repeats} rounds of 4 "
              f"interleaved epochs (before, after, after, before) of {cli.updates} updates. "
              f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (a machine shared "
              f"with other work: compare the two rows, not with other tables).\n\n{table}\n\nOn a CPU nothing waits "
              "for a device, so this shows the step's own Python and small-tensor overhead; how often a step waits "
              "for a GPU is counted by benchmarks/gpu_step_check.py (benchmarks/gpu_check.sh).\n")
    print(report)
    if cli.write_markdown:
        replace_section(cli.write_markdown, report, SECTION_HEADING)
    return medians


if __name__ == '__main__':
    main_cli()
