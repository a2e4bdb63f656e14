"""Point clouds at the recipe's sizes: the training loader's rate, the step's farthest-point sampling, and the
training step per shape next to the backbone alone.

1. Loader: the `--data_set MODELNET40` training set exactly as main.py builds it (SeededAugmentation included) over a
   modelnet40_normal_resampled folder this script writes (surface samplings of 4 solids, `--points` points per shape
   like ModelNet's 10,000), timed through a DataLoader per worker count (0 workers = the rate of one
   worker). Target: >= 100 shapes/s per worker.
2. Farthest-point sampling in the step: the adapter's `sample` (train mode: --pc_fps_points of --points from point 0,
   then the --pc_points lowest ranks) on a batch of `--fps_batch` loader samples on `--device`, per implementation
   available there (CPU: fpsample and the torch loop; CUDA: the torch loop).
3. Training step (forward, backward, AdamW) per shape on clouds already sampled to --pc_points: the whole adapter
   model, the backbone alone on the views' images (batch x --pc_views images at --input_size), and the fusion layer
   alone, timed interleaved (benchmarks/timing.py).

    python benchmarks/bench_point_cloud.py --write_markdown BENCHMARKS.md
    python benchmarks/bench_point_cloud.py --device cuda --model unireplknet_s --step_batch 16 --workers 0 4 8
"""
import argparse
import os
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import main  # noqa: E402
from bench_data_loading import loader_rate  # noqa: E402  (this folder is sys.path[0])
from datasets import build_dataset  # noqa: E402
from gpu_check_runs import write_primitive_modelnet  # noqa: E402
from modalities import point_cloud  # noqa: E402
from timing import interleaved_medians, machine_summary, markdown_table, replace_section, utc_now  # noqa: E402

SECTION_HEADING = '### Point clouds: loader, farthest-point sampling, training step (`bench_point_cloud.py`)'


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_once(function, device):
    """(wall seconds, CPU seconds of this process) of one call: on a loaded machine the CPU time is what the call
    would take on idle cores (for a single-threaded call; a multi-threaded one sums its threads)."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def fps_rows(model, clouds, device):
    """Seconds of the adapter's train-mode sampling of `clouds` with each FPS implementation usable on `device`."""
    implementations = {'torch loop': point_cloud.torch_farthest_point_sample}
    if device.type == 'cpu' and point_cloud.fpsample is not None:
        implementations['fpsample (compiled)'] = point_cloud.compiled_farthest_point_sample
    default = point_cloud.farthest_point_sample
    rows = []
    try:
        for name, implementation in implementations.items():
            point_cloud.farthest_point_sample = implementation
            model.sample(clouds)   # warm-up (CUDA: kernels and allocator)
            seconds, cpu_seconds = time_once(lambda: model.sample(clouds), device)
            rows.append([f'step FPS, {name}, batch {len(clouds)}',
                         f'{1000 * seconds:.0f} ms (CPU time {1000 * cpu_seconds:.0f} ms)',
                         f'{len(clouds) / seconds:.1f} shapes/s'])
            print(rows[-1], flush=True)
    finally:
        point_cloud.farthest_point_sample = default
    return rows


def training_step(function, parameters, inputs, device):
    """A closure running `function(inputs)`, a scalar loss's backward and AdamW over `parameters`."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)

    def step():
        function(inputs).float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
    return step


def step_rows(model, clouds, opts, device):
    """ms per shape of a training step: the adapter model, the backbone alone on its images, the fusion alone."""
    sampled = model.sample(clouds)
    fusion_inputs = []
    hook = model.fusion.register_forward_pre_hook(lambda module, inputs: fusion_inputs.append(inputs[0]))
    with torch.no_grad():
        images = model.project(sampled[..., point_cloud.PLACED], sampled[..., point_cloud.ORIGINAL])
    hook.remove()
    steps = {'adapter + backbone (whole model)': training_step(model, model.parameters(), sampled, device),
             f'backbone alone ({len(images)} images)':
                 training_step(model.backbone.forward_features, model.backbone.parameters(), images, device),
             'multi-view fusion alone': training_step(model.fusion, model.fusion.parameters(), fusion_inputs[0],
                                                      device)}
    medians = interleaved_medians(steps, warmup=1, repeats=opts.repeats)
    whole = medians['adapter + backbone (whole model)']
    return [[f'training step: {name}', f'{1000 * seconds / len(clouds):.0f} ms/shape',
             f'{100 * seconds / whole:.0f}% of the whole step'] for name, seconds in medians.items()]


def main_cli():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='unireplknet_a', help='backbone (the release: unireplknet_s)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--points', type=int, default=10000, help='points per shape file (ModelNet: 10,000)')
    parser.add_argument('--pc_fps_points', type=int, default=4800)
    parser.add_argument('--pc_points', type=int, default=4096)
    parser.add_argument('--input_size', type=int, default=224)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    parser.add_argument('--loader_batch', type=int, default=16, help='the recipe batch')
    parser.add_argument('--batches', type=int, default=8, help='timed loader batches per worker count')
    parser.add_argument('--fps_batch', type=int, default=32)
    parser.add_argument('--step_batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3, help='interleaved timed training steps of each')
    parser.add_argument('--write_markdown', default='', metavar='FILE', help='(re)write this section of FILE')
    opts = parser.parse_args()
    device = torch.device(opts.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_primitive_modelnet(os.path.join(tmp, 'modelnet'), opts.points,
                                        train_per_class=max(opts.fps_batch, opts.loader_batch) // 4 + 1)
        args = main.parse_args(['--model', opts.model, '--data_set', 'MODELNET40', '--data_path', data,
                                '--device', opts.device, '--input_size', str(opts.input_size), '--mixup', '0',
                                '--cutmix', '0', '--pc_points', str(opts.pc_points),
                                '--pc_fps_points', str(opts.pc_fps_points), '--seed', '0'])
        dataset, args.nb_classes = build_dataset(True, args)
        threads = torch.get_num_threads()
        for workers in opts.workers:
            # With 0 workers the loading runs in this process, on one thread as in a DataLoader worker: shapes per
            # CPU-second is then one worker's rate on an idle core (warm-up batch included).
            torch.set_num_threads(1 if workers == 0 else threads)
            start_cpu = time.process_time()
            rate = loader_rate(dataset, opts.loader_batch, workers, opts.batches)
            cpu_rate = ((opts.batches + 1) * opts.loader_batch / (time.process_time() - start_cpu)) \
                if workers == 0 else None
            rows.append([f'training loader, {workers} workers (0: in the main process)', '',
                         f'{rate:.1f} shapes/s' + (f' ({cpu_rate:.0f} per CPU-second)' if cpu_rate else '')])
            print(rows[-1], flush=True)
        torch.set_num_threads(threads)
        clouds = torch.stack([dataset[i][0] for i in range(opts.fps_batch)]).to(device)
    model = main.build_model(args).to(device).train()
    rows += fps_rows(model, clouds, device)
    rows += step_rows(model, clouds[:opts.step_batch], opts, device)
    table = markdown_table(['what', 'time', 'rate / share'], rows)
    report = (f'`python benchmarks/bench_point_cloud.py {" ".join(sys.argv[1:])}` on {machine_summary()}, '
              f'device {opts.device}, {utc_now()}, load average {os.getloadavg()[0]:.1f} at the end. Shapes of '
              f'{opts.points} points (surfaces of 4 solids) -> {opts.pc_fps_points} farthest -> {opts.pc_points}; '
              f'backbone {opts.model}, {args.pc_views} views at {opts.input_size} px.\n\n{table}\n')
    print(report)
    if opts.write_markdown:
        replace_section(opts.write_markdown, report, SECTION_HEADING)


if __name__ == '__main__':
    main_cli()
