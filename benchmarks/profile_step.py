"""Where a training step's time goes, per op family, for each model: so CPU tuning starts from a profile.

One training step (forward, cross-entropy, backward, AdamW) per model after warm-up steps, under torch.profiler.
Every profiled op's own (self) CPU time is given to the first op family found on its chain from the op up through
the ops that called it (forward ops, autograd's backward nodes, unireplknet_cpu's custom autograd functions):

* depthwise conv: a convolution with a (C, 1, k, k) weight, or unireplknet_cpu's depthwise conv;
* pointwise: Linear / matmul and their backward, and 1x1 convolutions (timm's convnext_atto has conv_mlp=True);
* dense conv: any other convolution (stem, downsampling);
* GRN + Linear (fused): unireplknet_cpu's GRN folded into the next Linear; GRN: its L2 norm;
* norms: LayerNorm, BatchNorm; activations: GELU;
* optimizer: AdamW's update; other: the rest (elementwise arithmetic, copies, reductions, layout changes).

The profiler inflates some ops inside a full training step: elementwise ops on the larger tensors measured up to
50x their unprofiled time (GRN's norm gradient at stage 2 of unireplknet_a: 48 ms per call profiled, 0.9 ms timed
alone in the same step, BENCHMARKS.md). So the script also times each top-level part (stem, every downsampling
layer and stage, the rest) forward and backward with module hooks over ordinary, unprofiled steps: the wall-clock
split to trust, the op families saying what runs inside.

    python benchmarks/profile_step.py --models unireplknet_a convnext_atto --threads 2 --batch 32 --img_size 224
"""
import argparse
import os
import sys
from collections import defaultdict

import time
import warnings

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import machine_summary, markdown_table, utc_now  # noqa: E402  (this folder)

import unireplknet  # noqa: E402,F401  (registers unireplknet_* with timm)

FAMILIES = ['depthwise conv', 'pointwise', 'dense conv', 'GRN + Linear (fused)', 'GRN', 'norms',
            'activations', 'optimizer', 'other']
CONV_NAMES = ('conv', 'Convolution')
LINEAR_NAMES = ('aten::linear', 'aten::addmm', 'aten::mm', 'aten::bmm', 'aten::matmul', 'AddmmBackward', 'MmBackward',
                'BmmBackward', 'aten::_addmm_activation')


def family_of(event):
    """The op family of one profiler event on its own (None: decided by the events that called it)."""
    name = event.name
    if 'Optimizer.step' in name:
        return 'optimizer'
    if 'DepthwiseConv' in name:
        return 'depthwise conv'
    if 'GRNThenLinear' in name:
        return 'GRN + Linear (fused)'
    if 'GRN' in name or 'SpatialL2Norm' in name:
        return 'GRN'
    if any(part in name for part in CONV_NAMES):
        shapes = [shape for shape in (event.input_shapes or []) if len(shape) == 4]
        if any(shape[1] == 1 for shape in shapes):    # a (C, 1, k, k) weight
            return 'depthwise conv'
        if any(shape[2:] == [1, 1] for shape in shapes):   # an (O, I, 1, 1) weight
            return 'pointwise'
        if shapes:
            return 'dense conv'
        return None   # an autograd node without shapes: its child convolution_backward carries them
    if any(part in name for part in LINEAR_NAMES):
        return 'pointwise'
    if 'norm' in name.lower() and 'vector_norm' not in name and 'linalg' not in name:
        return 'norms'
    if 'gelu' in name.lower():
        return 'activations'
    return None


def classify(event):
    """First family on the chain from `event` up through its callers (the leaf-most decision wins)."""
    node = event
    while node is not None:
        family = family_of(node)
        if family is not None:
            return family
        node = node.cpu_parent
    return 'other'


def training_setup(model, batch, img_size, channels_last):
    """(model, images, targets, AdamW) for timing training steps, model and images in channels_last if asked."""
    images = torch.randn(batch, 3, img_size, img_size)
    targets = torch.randint(0, 1000, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return model, images, targets, torch.optim.AdamW(model.parameters(), lr=1e-4)


def profile_step(model, batch, img_size, warmup, channels_last):
    model, images, targets, optimizer = training_setup(model, batch, img_size, channels_last)

    def step():
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        step()
    seconds = defaultdict(float)
    for event in profile.events():
        seconds[classify(event)] += event.self_cpu_time_total / 1e6
    return seconds


def model_parts(model):
    """(name, module) of the top-level parts: each element of `stages` / `downsample_layers`, other children whole."""
    parts = []
    for name, child in model.named_children():
        if name in ('stages', 'downsample_layers') and isinstance(child, (nn.ModuleList, nn.Sequential)):
            parts += [(f'{name}.{i}', sub) for i, sub in enumerate(child)]
        else:
            parts.append((name, child))
    return parts


def part_times(model, batch, img_size, steps, channels_last):
    """{part: (forward ms, backward ms)} per training step from module hooks over `steps` unprofiled steps after one
    warm-up, then the rest and the whole step (forward ms = the time, backward None). A part whose input needs no
    gradient (the stem) reports its backward under the rest, with the loss and the optimizer."""
    model, images, targets, optimizer = training_setup(model, batch, img_size, channels_last)
    totals, started, handles = defaultdict(float), {}, []
    for name, part in model_parts(model):
        def start(key):
            return lambda *args: started.__setitem__(key, time.perf_counter())

        def stop(key):
            return lambda *args: totals.__setitem__(key, totals[key] + time.perf_counter() - started.pop(key))
        handles += [part.register_forward_pre_hook(start((name, 'forward'))),
                    part.register_forward_hook(stop((name, 'forward'))),
                    part.register_full_backward_pre_hook(start((name, 'backward'))),
                    part.register_full_backward_hook(stop((name, 'backward')))]

    def step():
        with warnings.catch_warnings():  # the stem's hook: "firing when gradients are computed with respect to ..."
            warnings.filterwarnings('ignore', message='Full backward hook is firing')
            F.cross_entropy(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    totals.clear()
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    step_seconds = (time.perf_counter() - begin) / steps
    for handle in handles:
        handle.remove()
    times = {name: (1000 * totals[(name, 'forward')] / steps, 1000 * totals[(name, 'backward')] / steps)
             for name, _ in model_parts(model)}
    times = {name: t for name, t in times.items() if sum(t) >= 0.05}  # parts that ran (e.g. not an Identity norm)
    times['rest: loss, optimizer, stem backward'] = (1000 * step_seconds - sum(sum(t) for t in times.values()), None)
    times['step (wall clock)'] = (1000 * step_seconds, None)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['unireplknet_a', 'convnext_atto'])
    parser.add_argument('--channels_last', nargs='+', default=['convnext_atto'],
                        help='models run in channels_last (each in its faster layout; ours is faster in NCHW)')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--img_size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--steps', type=int, default=3, help='unprofiled steps timed per model for the part table')
    parser.add_argument('--out', default='', help='append the table to this markdown file')
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    shares = {}
    for name in opts.models:
        model = timm.create_model(name).train()
        seconds = profile_step(model, opts.batch, opts.img_size, opts.warmup, name in opts.channels_last)
        shares[name] = seconds
        print(name, {family: round(value, 3) for family, value in seconds.items()}, flush=True)
    totals = {name: sum(seconds.values()) for name, seconds in shares.items()}
    rows = [[family, *[f'{1000 * shares[name][family]:.0f} ms ({100 * shares[name][family] / totals[name]:.0f}%)'
                       for name in opts.models]] for family in FAMILIES]
    rows.append(['total (profiled self time)', *[f'{1000 * totals[name]:.0f} ms' for name in opts.models]])
    table = markdown_table(['op family', *opts.models], rows)
    for name in opts.models:
        times = part_times(timm.create_model(name).train(), opts.batch, opts.img_size, opts.steps,
                           name in opts.channels_last)
        step_ms = times['step (wall clock)'][0]
        part_rows = [[part, f'{forward:.1f}', '' if backward is None else f'{backward:.1f}',
                      f'{100 * (forward + (backward or 0)) / step_ms:.0f}%']
                     for part, (forward, backward) in times.items()]
        table += (f'\n\n{name}, wall clock per part (module hooks, no profiler, mean of {opts.steps} steps):\n\n'
                  + markdown_table(['part', 'forward ms', 'backward ms', 'share of step'], part_rows))
    report = (f'`python benchmarks/profile_step.py {" ".join(argv if argv is not None else sys.argv[1:])}`: one '
              f'training step at batch {opts.batch}, {opts.img_size} px, {opts.threads} threads, channels_last for '
              f'{", ".join(opts.channels_last) or "none"}; {machine_summary()}, {utc_now()}, load average '
              f'{os.getloadavg()[0]:.1f}.\n\n{table}\n')
    print(report)
    if opts.out:
        with open(opts.out, 'a') as f:
            f.write(f'\n### Training step per op family (`profile_step.py`)\n\n{report}')


if __name__ == '__main__':
    main()
