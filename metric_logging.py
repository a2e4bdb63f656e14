"""Metric logging: console progress lines with an ETA, TensorBoard and W&B loggers, and log.txt.

`MetricLogger.log_every` prints the original release's progress lines; `SmoothedValue` tracks one
series (windowed median/average and the global average, summed over ranks on request).
log.txt holds one JSON line per finished epoch (`append_json_line`); a resumed run first removes the
lines of the epochs it repeats (`drop_log_lines_from_epoch`), so each epoch appears once.
"""
import datetime
import json
import os
import time
from collections import defaultdict, deque

import numpy as np
import torch
import torch.distributed as dist

from utils import is_dist_avail_and_initialized


class SmoothedValue:
    """Track a series of values; report a windowed median/average and the global average."""

    def __init__(self, window_size=20, fmt='{median:.4f} ({global_avg:.4f})'):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """Sum count and total over ranks (the window is kept local)."""
        if not is_dist_avail_and_initialized():
            return
        device = 'cuda' if dist.get_backend() == 'nccl' else 'cpu'
        tensor = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        self.count, self.total = int(tensor[0].item()), tensor[1].item()

    @property
    def median(self):
        return float(np.median(list(self.deque)))

    @property
    def avg(self):
        return float(np.mean(list(self.deque)))

    @property
    def global_avg(self):
        return self.total / max(self.count, 1)

    @property
    def max(self):
        return max(self.deque)

    @property
    def value(self):
        return self.deque[-1]

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """Named SmoothedValues plus `log_every`, which prints progress lines with an ETA."""

    def __init__(self, delimiter='  '):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs):
        for name, value in kwargs.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(float(value))

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def __str__(self):
        return self.delimiter.join(f'{name}: {meter}' for name, meter in self.meters.items() if meter.deque)

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable, print_freq, header='', before_print=None):
        """Yield from iterable, printing `header [i/N] eta ... meters ... time data max mem` lines.

        `before_print` (if given) runs before each line, e.g. to read metrics kept on the device into the meters."""
        total = len(iterable)
        start_time = end = time.time()
        iter_time = SmoothedValue(fmt='{avg:.4f}')
        data_time = SmoothedValue(fmt='{avg:.4f}')
        width = len(str(total))
        for i, item in enumerate(iterable):
            data_time.update(time.time() - end)
            yield item
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                if before_print is not None:
                    before_print()
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                parts = [header, f'[{i:>{width}}/{total}]', f'eta: {eta}', str(self),
                         f'time: {iter_time}', f'data: {data_time}']
                if torch.cuda.is_available():
                    parts.append(f'max mem: {torch.cuda.max_memory_allocated() / 2 ** 20:.0f}')
                print(self.delimiter.join(parts), flush=True)
            end = time.time()
        total_time = time.time() - start_time
        print(f'{header} Total time: {datetime.timedelta(seconds=int(total_time))} '
              f'({total_time / max(total, 1):.4f} s / it)', flush=True)


class TensorboardLogger:
    """Scalar logging to TensorBoard (torch.utils.tensorboard), rank 0 only."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=log_dir)
        self.step = 0

    def set_step(self, step):
        self.step = step

    def update(self, head='scalar', step=None, **kwargs):
        for name, value in kwargs.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer.add_scalar(f'{head}/{name}', value, self.step if step is None else step)

    def flush(self):
        self.writer.flush()


class WandbLogger:
    """Weights & Biases logging for --enable_wandb (needs `pip install wandb`)."""

    def __init__(self, args):
        try:
            import wandb
        except ImportError as error:
            raise RuntimeError('--enable_wandb true needs the wandb package: pip install wandb') from error
        self.wandb = wandb
        self.run = wandb.init(project=args.project, config=vars(args))

    def log_epoch(self, stats, epoch):
        self.run.summary['n_parameters'] = stats.get('n_parameters')
        metrics = {}
        for key, value in stats.items():
            if key.startswith('train_'):
                metrics[f'Global Train/{key[len("train_"):]}'] = value
            elif key.startswith('test_'):
                metrics[f'Global Test/{key[len("test_"):]}'] = value
        metrics['epoch'] = epoch
        self.wandb.log(metrics)

    def upload_checkpoints(self, output_dir):
        artifact = self.wandb.Artifact(name=f'run-{self.run.id}', type='model')
        artifact.add_dir(output_dir)
        self.run.log_artifact(artifact)

    def finish(self):
        self.run.finish()


def append_json_line(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def drop_log_lines_from_epoch(path, first_epoch):
    """Remove log.txt lines of epochs >= first_epoch (their checkpoint was never written; a resumed
    run repeats them), so each epoch appears once."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get('epoch', -1) < first_epoch]
    if len(kept) != len(lines):
        with open(path, 'w') as f:
            f.writelines(kept)
