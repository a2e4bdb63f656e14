"""torch.compile against eager on CPU: training step and deployed (re-parameterised) inference, img/s.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --model unireplknet_a --batch 8 --img_size 224

The training step is forward + cross-entropy + backward + AdamW step (what main.py --compile compiles: the model's
forward and backward, via main.compiled); inference runs under torch.inference_mode on the reparameterised copy. Each
compiled variant is called once untimed first (the compilation, whose time is reported), then eager and compiled are
timed interleaved (benchmarks/timing.py). Prints a markdown table.
"""
import argparse
import copy
import os
import sys
import time

import torch
from timm.utils import reparameterize_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import main  # noqa: E402
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402


def training_step(model, images, targets):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def inference_step(model, images):
    def step():
        with torch.inference_mode():
            model(images)
    return step


def seconds_of_first_call(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main_cli(args):
    model = main.build_model(main.parse_args(['--model', args.model, '--nb_classes', '1000']))
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    targets = torch.randint(0, 1000, (args.batch,))
    trained, trained_copy = model.train(), copy.deepcopy(model).train()
    deployed = reparameterize_model(copy.deepcopy(model).eval())
    steps = {'train eager': training_step(trained, images, targets),
             'train compiled': training_step(main.compiled(trained_copy, args.backend), images, targets),
             'deployed eager': inference_step(deployed, images),
             'deployed compiled': inference_step(main.compiled(deployed, args.backend), images)}
    compile_seconds = {label: seconds_of_first_call(step) for label, step in steps.items() if 'compiled' in label}
    medians = interleaved_medians(steps, warmup=args.warmup, repeats=args.repeats)
    rows = []
    for what in ('train', 'deployed'):
        eager, compiled = medians[f'{what} eager'], medians[f'{what} compiled']
        rows.append([what, f'{args.batch / eager:.1f}', f'{args.batch / compiled:.1f}', f'{eager / compiled:.2f}x',
                     f'{compile_seconds[f"{what} compiled"]:.0f} s'])
    print(f'{utc_now()}; {machine_summary()}; {args.model}, batch {args.batch}, {args.img_size}x{args.img_size}, '
          f'backend {args.backend}, median of {args.repeats} interleaved repeats after {args.warmup} warm-up calls')
    print(markdown_table(['step', 'eager img/s', 'compiled img/s', 'compiled / eager', 'first call (compile)'], rows))


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--batch', default=8, type=int)
    parser.add_argument('--img_size', default=224, type=int)
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--warmup', default=1, type=int)
    parser.add_argument('--repeats', default=5, type=int)
    main_cli(parser.parse_args())
