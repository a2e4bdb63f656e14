"""Data-loading throughput of the audio and video modalities against the model's training step.

For `--data_set SPEECHCOMMANDS` (WAV reading, waveform mixup, Kaldi filterbank, SpecAugment: utterances/s) and
`--data_set KINETICS400` (PyAV decoding, per-frame augmentation, frame layout: clips/s) this builds the training
set exactly as main.py does (main.parse_args + datasets.build_dataset, SeededAugmentation included) over files it
writes to a temporary folder (1 s tones in the v0.02 layout; MP4 clips of moving noise at Kinetics' 340 x 256),
times a DataLoader over it for each worker count, and times a training step (forward, backward, AdamW) of
`--model` on batches of the same shape. If the loader's samples/s at your worker count is below the step's, the
accelerator waits for data: add workers, or pre-decode.

    python benchmarks/bench_data_loading.py --write_markdown BENCHMARKS.md
    python benchmarks/bench_data_loading.py --model unireplknet_s --device cuda --workers 0 4 8 16 \
        --video_input_size 224
"""
import argparse
import os
import sys
import tempfile
import time

import av
import numpy as np
import soundfile
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import main  # noqa: E402
from datasets import build_dataset  # noqa: E402
from timing import machine_summary, markdown_table, replace_section, utc_now  # noqa: E402  (this folder is sys.path[0])

SECTION_HEADING = '### Audio and video data loading (`bench_data_loading.py`)'


def write_speech_folder(root, words=4, per_word=16):
    rng = np.random.default_rng(0)
    for k in range(words):
        os.makedirs(os.path.join(root, f'word{k}'), exist_ok=True)
        for n in range(per_word):
            tone = 0.3 * np.sin(2 * np.pi * 200 * (k + 1) * np.arange(16000) / 16000)
            soundfile.write(os.path.join(root, f'word{k}', f'{n:08x}_nohash_0.wav'),
                            tone + 0.02 * rng.standard_normal(16000), 16000, subtype='PCM_16')
    for name in ('validation_list.txt', 'testing_list.txt'):
        open(os.path.join(root, name), 'w').close()
    return words


def write_video_folder(root, classes=2, per_class=8, frames=72, size=(340, 256)):
    rng = np.random.default_rng(0)
    lines = []
    for label in range(classes):
        for n in range(per_class):
            path = os.path.join(root, f'clip{label}_{n}.mp4')
            base = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            with av.open(path, 'w') as container:
                stream = container.add_stream('libx264', rate=25)
                stream.width, stream.height, stream.pix_fmt = size[0], size[1], 'yuv420p'
                for t in range(frames):
                    picture = av.VideoFrame.from_ndarray(np.roll(base, 4 * t, axis=1), format='rgb24')
                    for packet in stream.encode(picture):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            lines.append(f'{os.path.basename(path)} {label}')
    with open(os.path.join(root, 'train.csv'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return classes


def loader_rate(dataset, batch_size, workers, batches):
    """Samples per second of a DataLoader over `batches` batches after one warm-up batch."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * batch_size,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         drop_last=True)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def step_rate(args, sample, batch_size, steps, device):
    """Samples per second of forward + backward + AdamW on batches shaped like `sample`."""
    model = main.build_model(args).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = sample[None].expand(batch_size, *sample.shape).contiguous().to(device)
    targets = torch.zeros(batch_size, dtype=torch.long, device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def measure(name, argv, opts, device):
    args = main.parse_args(argv)
    dataset, _ = build_dataset(True, args)
    dataset.set_epoch(0)
    sample = dataset[0][0]
    rows = []
    for workers in opts.workers:
        rate = loader_rate(dataset, opts.batch_size, workers, opts.batches)
        rows.append([name, f'{workers}', f'{rate:.1f}'])
        print(f'{name}: {workers} workers: {rate:.1f} samples/s', flush=True)
    model_rate = step_rate(args, sample, opts.batch_size, opts.steps, device)
    print(f'{name}: {args.model} training step on {tuple(sample.shape)}: {model_rate:.1f} samples/s', flush=True)
    rows.append([name, f'model step ({args.model}, input {tuple(sample.shape)})', f'{model_rate:.1f}'])
    return rows


def main_cli():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='unireplknet_a')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--batches', type=int, default=4, help='timed batches per worker count')
    parser.add_argument('--steps', type=int, default=3, help='timed training steps')
    parser.add_argument('--video_input_size', type=int, default=64, help='pixels per frame (the recipe: 224)')
    parser.add_argument('--write_markdown', default=None, metavar='FILE', help='write the results into their section of FILE (replacing an earlier run)')
    opts = parser.parse_args()
    device = torch.device(opts.device)
    common = ['--model', opts.model, '--device', opts.device, '--seed', '0']
    with tempfile.TemporaryDirectory() as tmp:
        speech, clips = os.path.join(tmp, 'speech'), os.path.join(tmp, 'clips')
        os.makedirs(clips)
        words = write_speech_folder(speech)
        classes = write_video_folder(clips)
        rows = measure('SPEECHCOMMANDS (utterances/s)',
                       [*common, '--data_set', 'SPEECHCOMMANDS', '--data_path', speech, '--nb_classes', str(words),
                        '--mixup', '0', '--cutmix', '0'], opts, device)
        rows += measure('KINETICS400 (clips/s)',
                        [*common, '--data_set', 'KINETICS400', '--data_path', clips, '--nb_classes', str(classes),
                         '--input_size', str(opts.video_input_size), '--aa', 'rand-m7-n4-mstd0.5-inc1'],
                        opts, device)
    table = markdown_table(['data set', 'DataLoader workers / model step', 'samples/s'], rows)
    print(table)
    if opts.write_markdown:
        replace_section(opts.write_markdown,
                        f'`python benchmarks/bench_data_loading.py {" ".join(sys.argv[1:])}` on {machine_summary()}, '
                        f'{utc_now()}. Batch {opts.batch_size}; audio: 1 s 16 kHz WAVs, mixup p = 0.6; video: 72-frame '
                        f'340 x 256 H.264 clips, 16 frames every 4th at {opts.video_input_size} px.\n\n{table}',
                        SECTION_HEADING)


if __name__ == '__main__':
    main_cli()
