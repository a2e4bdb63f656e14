"""End-to-end GPU readiness: short `torchrun --nproc_per_node=1` runs of main.py, one line of pass/FAIL each.

Run by `benchmarks/gpu_check.sh` after the model-alone checks (benchmarks/gpu_check.py). On CUDA the process group
is NCCL (utils.init_distributed_mode); `--device cpu --tiny` runs the same runs with gloo on a tiny model and tiny
inputs (tests/test_benchmark_scripts.py does, so the script's logic is tested without a GPU).

Runs (images: a folder of generated JPEGs, 4 classes, 8 steps per epoch at --batch_size):
* images, AMP bfloat16; images, AMP float16 (GradScaler); images, EMA + channels_last + a step checkpoint;
* kill and resume: an uninterrupted run against one killed (SIGKILL) after its first step checkpoint of the second
  epoch and resumed; both with --deterministic, and the final weights must be bitwise equal;
* one short run per modality: point clouds (surfaces of trimesh's primitive solids, 10,000 points per shape, the
  farthest-point sampling on the training device), audio (tones in the Speech Commands layout), video (H.264 clips).
  Time series is not run here (its data needs station files; tests/test_time_series.py covers it on CPU).

A run passes when main.py exits 0, every logged training loss is finite and its final checkpoint holds what the run
must save (the EMA weights of the EMA run); the kill-and-resume line also needs bitwise-equal weights. Each line
reports samples/s (the batch over the last epoch's average step time, main.py's own log) and peak CUDA memory
(main.py's `max mem`). Exits 1 if any line fails, after printing the failing runs' output.

    python benchmarks/gpu_check_runs.py --device cuda --out gpu_check_runs.md
    python benchmarks/gpu_check_runs.py --device cpu --tiny     # the logic, on CPU with gloo
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import torch
import trimesh

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from bench_data_loading import write_speech_folder, write_video_folder  # noqa: E402  (this folder)
from bench_train import write_jpeg_folder  # noqa: E402
from checkpoint import list_periodic_checkpoints  # noqa: E402
from timing import machine_summary, markdown_table, utc_now  # noqa: E402
from tools import make_modelnet_from_meshes  # noqa: E402

TINY_MODEL = ['--model', 'unireplknet_a', '--model_overrides',
              '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "kernel_sizes": [[3], [7], [7], [3]]}']
# Training time of each run: epochs x steps; the kill-and-resume run is killed in its second epoch.
EPOCHS = 2
STEP_LINE = re.compile(r'Epoch: \[(\d+)\]  \[.*time: ([0-9.]+)')   # main.py's lines start with a timestamp
MEMORY = re.compile(r'max mem: (\d+)')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def command(argv):
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', f'--master_port={free_port()}',
            os.path.join(REPO_ROOT, 'main.py'), *argv]


def start(argv, log_path):
    return subprocess.Popen(command(argv), cwd=REPO_ROOT, stdout=open(log_path, 'w'), stderr=subprocess.STDOUT,
                            start_new_session=True)   # its own process group: a kill reaches torchrun's worker too


def finish(process, log_path, timeout):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, open(log_path).read()


def speed_and_memory(output, batch_size):
    """(samples/s over the last epoch's average step time, peak CUDA MiB or None) from main.py's log lines."""
    step_times = [float(match.group(2)) for match in map(STEP_LINE.search, output.splitlines()) if match]
    memory = [int(value) for value in MEMORY.findall(output)]
    return (batch_size / step_times[-1] if step_times else None), (max(memory) if memory else None)


def logged_losses(output_dir):
    path = os.path.join(output_dir, 'log.txt')
    return [json.loads(line)['train_loss'] for line in open(path)] if os.path.isfile(path) else []


def checkpoint_has(path, key):
    return os.path.isfile(path) and key in torch.load(path, map_location='cpu', weights_only=False)


def check_run(name, argv, output_dir, batch_size, timeout, must_exist=()):
    """Run main.py to the end; a result row and the output (for the report of a failure)."""
    log_path = output_dir + '.log'
    returncode, output = finish(start([*argv, '--output_dir', output_dir], log_path), log_path, timeout)
    losses = logged_losses(output_dir)
    missing = [f'{path}[{key!r}]' for path, key in must_exist
               if not checkpoint_has(os.path.join(output_dir, path), key)]
    problems = ([f'exit code {returncode}'] if returncode else []) + \
        ([f'{len(losses)} of {EPOCHS} epochs logged'] if len(losses) != EPOCHS else []) + \
        (['a training loss is not finite'] if not all(map(math.isfinite, losses)) else []) + \
        ([f'missing {", ".join(missing)}'] if missing else [])
    return row(name, problems, *speed_and_memory(output, batch_size)), output


def row(name, problems, samples_per_second, memory):
    return [name, 'FAIL: ' + '; '.join(problems) if problems else 'pass',
            'n/a' if samples_per_second is None else f'{samples_per_second:.1f}',
            'n/a' if memory is None else f'{memory}']


def check_kill_and_resume(argv, base, batch_size, timeout):
    """Uninterrupted vs killed (after the first step checkpoint of the second epoch) and resumed: bitwise weights."""
    argv = [*argv, '--deterministic', 'true', '--save_ckpt_every_steps', '1']
    uninterrupted, interrupted = os.path.join(base, 'uninterrupted'), os.path.join(base, 'interrupted')
    reference, output = check_run('kill and resume: uninterrupted run', argv, uninterrupted, batch_size, timeout)
    if reference[1] != 'pass':
        return reference, output
    process = start([*argv, '--output_dir', interrupted], interrupted + '.log')
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and \
            not any(epoch == 1 for (epoch, _), _ in list_periodic_checkpoints(interrupted)):
        time.sleep(0.05)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result, output = check_run('kill and resume (SIGKILL in epoch 2, --deterministic)', argv, interrupted,
                               batch_size, timeout)
    problems = [] if result[1] == 'pass' else [result[1][len('FAIL: '):]]
    if not killed:
        problems.append('the run ended before it could be killed')
    else:
        expected = torch.load(os.path.join(uninterrupted, f'checkpoint-{EPOCHS - 1}.pth'), map_location='cpu',
                              weights_only=False)['model']
        resumed = torch.load(os.path.join(interrupted, f'checkpoint-{EPOCHS - 1}.pth'), map_location='cpu',
                             weights_only=False)['model']
        differing = [key for key in expected if not torch.equal(expected[key], resumed[key])]
        if differing:
            problems.append(f'{len(differing)} weight tensors differ from the uninterrupted run, e.g. {differing[:3]}')
    return [result[0], 'FAIL: ' + '; '.join(problems) if problems else 'pass', *result[2:]], output


def write_primitive_modelnet(root, points, train_per_class=8):
    """A ModelNet-40 text layout of 4 solids (trimesh's primitives: no mesh files needed), 2 test shapes each."""
    meshes = [trimesh.creation.box(), trimesh.creation.icosphere(), trimesh.creation.cylinder(0.5, 2.0),
              trimesh.creation.torus(1.0, 0.3)]
    samples = make_modelnet_from_meshes.make_samples(meshes, {'train': train_per_class, 'test': 2}, points)
    return make_modelnet_from_meshes.write_text_layout(root, ['box', 'sphere', 'cylinder', 'torus'], samples)


def runs(opts, base):
    """[(name, argv, batch size, [(checkpoint file the run must write, a key it must hold)]); None: kill and resume]."""
    device = ['--device', opts.device, '--seed', '0', '--epochs', str(EPOCHS), '--warmup_epochs', '0',
              '--num_workers', str(opts.workers)]
    model = TINY_MODEL if opts.tiny else ['--model', opts.model]
    batch = 4 if opts.tiny else opts.batch_size
    size = '32' if opts.tiny else str(opts.input_size)
    pictures = os.path.join(base, 'images')
    write_jpeg_folder(pictures, num_classes=4, images_per_class=2 * batch, image_size=int(size))
    images = [*device, *model, '--data_set', 'image_folder', '--data_path', pictures, '--eval_data_path', pictures,
              '--nb_classes', '4', '--input_size', size, '--batch_size', str(batch), '--lr', '1e-3']
    amp = [] if opts.device == 'cpu' else ['--use_amp', 'true']
    modelnet = write_primitive_modelnet(os.path.join(base, 'modelnet'), 400 if opts.tiny else 10000)
    speech = os.path.join(base, 'speech')
    words = write_speech_folder(speech)
    clips = os.path.join(base, 'clips')
    os.makedirs(clips)
    classes = write_video_folder(clips)
    shutil.copy(os.path.join(clips, 'train.csv'), os.path.join(clips, 'val.csv'))   # evaluation needs a list too
    point_sizes = ['--pc_points', '128', '--pc_fps_points', '160', '--pc_knn', '16', '--pc_encoder_dim', '16',
                   '--pc_fusion_dim', '16'] if opts.tiny else []
    no_mix = ['--mixup', '0', '--cutmix', '0']
    return [
        ('images, AMP bfloat16', [*images, *amp, '--amp_dtype', 'bfloat16'], batch, ()),
        ('images, AMP float16 (GradScaler)' if amp else 'images, float32 (float16 AMP needs CUDA)',
         [*images, *amp, '--amp_dtype', 'float16' if amp else 'bfloat16'], batch, ()),
        ('images, EMA, channels_last, step checkpoint', [*images, '--model_ema', 'true', '--channels_last', 'true',
                                                         '--save_ckpt_every_steps', '2'],
         batch, [(f'checkpoint-{EPOCHS - 1}.pth', 'model_ema')]),   # step checkpoints are pruned by then
        ('kill and resume', images, batch, None),
        ('point clouds (FPS in the step, on the device)',
         [*device, *model, '--data_set', 'MODELNET40', '--data_path', modelnet, '--input_size', size,
          '--batch_size', str(batch), *point_sizes, *no_mix, '--smoothing', '0.2'], batch, ()),
        ('audio (SPEECHCOMMANDS)', [*device, *model, '--data_set', 'SPEECHCOMMANDS', '--data_path', speech,
                                    '--nb_classes', str(words), '--batch_size', str(batch), *no_mix], batch, ()),
        ('video (KINETICS400)', [*device, *model, '--data_set', 'KINETICS400', '--data_path', clips,
                                 '--nb_classes', str(classes), '--input_size', '64' if opts.tiny else size,
                                 '--batch_size', '2'], 2, ()),   # video frames need more than 32 px
    ]


def main_cli(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--tiny', action='store_true', help='tiny model and inputs (CPU check of the logic)')
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--input_size', type=int, default=224)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--timeout', type=int, default=240, help='seconds per run')
    parser.add_argument('--only', nargs='+', default=None, metavar='WORD',
                        help='only the runs whose name contains one of these words')
    parser.add_argument('--main_args', nargs=argparse.REMAINDER, default=[],
                        help='(last) more main.py options for every run')
    parser.add_argument('--out', default='', help='also write the report (markdown) here')
    opts = parser.parse_args(argv)
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as base:
        for name, argv, batch, must_exist in runs(opts, base):
            if opts.only and not any(word in name for word in opts.only):
                continue
            argv = [*argv, *opts.main_args]
            output_dir = os.path.join(base, re.sub(r'\W+', '_', name))
            if must_exist is None:
                os.makedirs(output_dir)
                result, output = check_kill_and_resume(argv, output_dir, batch, opts.timeout)
            else:
                result, output = check_run(name, argv, output_dir, batch, opts.timeout, must_exist)
            rows.append(result)
            print(' | '.join(result), flush=True)
            if result[1] != 'pass':
                failures.append((result[0], output))
    table = markdown_table(['run (torchrun --nproc_per_node=1 main.py)', 'result', 'samples/s', 'peak MiB'], rows)
    report = (f'main.py runs on {opts.device} ({"gloo" if opts.device == "cpu" else "NCCL"}), '
              f'{machine_summary()}, {utc_now()}:\n\n{table}\n')
    print(report)
    if opts.out:
        with open(opts.out, 'a') as f:
            f.write(f'\n## End-to-end runs (gpu_check_runs.py)\n\n{report}')
    for name, output in failures:
        print(f'\n===== FAILED: {name} (last lines of its output) =====\n{output[-3000:]}', file=sys.stderr)
    if failures:
        raise SystemExit(f'{len(failures)} of {len(rows)} runs failed: {", ".join(name for name, _ in failures)}')


if __name__ == '__main__':
    main_cli()
