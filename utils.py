"""Training utilities: distributed setup, logging, stop requests, samplers and checkpoints.

Used by main.py, engine.py and run_with_submitit.py.

Distributed setup follows the original release (DeiT/ConvNeXt lineage): OpenMPI variables with
``--dist_on_itp``, else RANK/WORLD_SIZE from torchrun or torch.distributed.launch, else SLURM_PROCID
(as set by SLURM and submitit), else a single process. CUDA devices use NCCL, CPU uses gloo.

Checkpoints are written by rank 0 only, atomically (temporary file, fsync, ``os.replace``), and contain
only tensors and plain Python data, so ``torch.load(path, weights_only=True)`` reads them:

    model, optimizer, scaler, model_ema (if EMA is on), epoch, step (optimizer updates done in that
    epoch), epoch_done, max_accuracy, max_accuracy_ema, rng_states (one entry per rank), args (dict)

File names: ``checkpoint-{epoch}.pth`` once an epoch (training, evaluation and log line) is complete,
``checkpoint-{epoch}-step{step}.pth`` inside an epoch (``--save_ckpt_every_steps`` and stop requests),
``checkpoint-best.pth`` and ``checkpoint-best-ema.pth``. Auto-resume picks the newest position
(epoch, step) and never a 'best' file.

Stop requests (preemption): a signal handler calls ``request_stop()``; the training loop checks
``stop_requested()`` at every optimizer update, agrees on it across ranks, writes a step checkpoint and
raises ``TrainingInterrupted``.
"""
import argparse
import builtins
import datetime
import glob
import json
import os
import pickle
import random
import re
import time
from collections import defaultdict, deque

import numpy as np
import torch
import torch.distributed as dist


def str2bool(value):
    """argparse type accepting yes/true/t/y/1 and no/false/f/n/0, like the original scripts."""
    if isinstance(value, bool):
        return value
    if value.lower() in ('yes', 'true', 't', 'y', '1'):
        return True
    if value.lower() in ('no', 'false', 'f', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError(f'boolean value expected (true/false), got {value!r}')


# --------------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------------

def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist_avail_and_initialized():
        dist.barrier()


def setup_for_distributed(is_master):
    """Silence print() on non-master ranks; print(..., force=True) still prints."""
    builtin_print = builtins.print

    def print(*args, **kwargs):
        force = kwargs.pop('force', False)
        if is_master or force:
            now = datetime.datetime.now().time()
            builtin_print(f'[{now}] ', end='')
            builtin_print(*args, **kwargs)

    builtins.print = print


def init_distributed_mode(args):
    """Set args.distributed, args.rank, args.world_size, args.gpu and join the process group.

    Priority: --dist_on_itp (OpenMPI), RANK/WORLD_SIZE (torchrun, torch.distributed.launch),
    SLURM_PROCID (srun / submitit; world size from args.world_size, which the launcher sets), else
    single process. dist_url may be 'env://', 'tcp://host:port' or 'file:///shared/path'.
    """
    env = os.environ
    if args.dist_on_itp:
        args.rank = int(env['OMPI_COMM_WORLD_RANK'])
        args.world_size = int(env['OMPI_COMM_WORLD_SIZE'])
        args.gpu = int(env['OMPI_COMM_WORLD_LOCAL_RANK'])
        args.dist_url = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    elif 'RANK' in env and 'WORLD_SIZE' in env:
        args.rank = int(env['RANK'])
        args.world_size = int(env['WORLD_SIZE'])
        args.gpu = int(env.get('LOCAL_RANK', 0))
    elif 'SLURM_PROCID' in env and args.world_size > 1:
        args.rank = int(env['SLURM_PROCID'])
        if 'SLURM_LOCALID' in env:
            args.gpu = int(env['SLURM_LOCALID'])
        else:
            args.gpu = args.rank % max(torch.cuda.device_count(), 1)
    else:
        print('Not using distributed mode')
        args.distributed = False
        args.rank, args.world_size, args.gpu = 0, 1, 0
        return

    os.environ['RANK'] = str(args.rank)
    os.environ['LOCAL_RANK'] = str(args.gpu)
    os.environ['WORLD_SIZE'] = str(args.world_size)
    if args.dist_url == 'env://' and 'MASTER_ADDR' not in env:
        raise RuntimeError('distributed run with --dist_url env:// but MASTER_ADDR/MASTER_PORT are not set; '
                           'launch with torchrun, or pass --dist_url tcp://HOST:PORT or file:///shared/path')

    args.distributed = True
    use_cuda = str(args.device).startswith('cuda') and torch.cuda.is_available()
    backend = 'nccl' if use_cuda else 'gloo'
    if use_cuda:
        torch.cuda.set_device(args.gpu)
    print(f'| distributed init (rank {args.rank}, world {args.world_size}, {backend}): {args.dist_url}', flush=True)
    dist.init_process_group(backend=backend, init_method=args.dist_url,
                            world_size=args.world_size, rank=args.rank)
    if use_cuda:
        dist.barrier(device_ids=[args.gpu])
    else:
        dist.barrier()
    setup_for_distributed(args.rank == 0)


def any_rank_true(flags, device):
    """Element-wise OR of a list of booleans over all ranks (one tiny all-reduce)."""
    tensor = torch.tensor([float(flag) for flag in flags], device=device)
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


# --------------------------------------------------------------------------------------------------
# Stop requests (preemption) and errors
# --------------------------------------------------------------------------------------------------

_stop_requested = False


def request_stop(*_signal_args):
    """Ask the training loop to checkpoint and stop at the next optimizer update.

    Only sets a flag, so it is safe to call from a signal handler (it accepts and ignores the
    handler's (signum, frame) arguments).
    """
    global _stop_requested
    _stop_requested = True


def stop_requested():
    return _stop_requested


def clear_stop_request():
    global _stop_requested
    _stop_requested = False


class TrainingInterrupted(Exception):
    """Raised by main() after a requested stop, once the step checkpoint is written on rank 0."""


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when any rank's loss is NaN or infinite; no checkpoint is written."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used (truncated, unsafe to unpickle, or of another model)."""


# --------------------------------------------------------------------------------------------------
# Metric logging (console lines with ETA, like the original)
# --------------------------------------------------------------------------------------------------

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

    def log_every(self, iterable, print_freq, header=''):
        """Yield from iterable, printing `header [i/N] eta ... meters ... time data max mem` lines."""
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


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------

class ResumableTrainSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler that yields only this epoch's consumed samples, from a given position.

    The permutation is DistributedSampler's (shuffle with seed + epoch, padded to a multiple of the
    world size, split across ranks). It is cut to `samples_per_epoch` per rank (the samples the epoch's
    optimizer steps use, so no partial accumulation window is fetched) and can start at
    `start_sample`, so a run resumed mid-epoch never fetches or augments the batches it already used.
    """

    def __init__(self, dataset, num_replicas, rank, seed, samples_per_epoch):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.samples_per_epoch = samples_per_epoch
        self.start_sample = 0

    def set_epoch(self, epoch, start_sample=0):
        super().set_epoch(epoch)
        self.start_sample = start_sample

    def __iter__(self):
        indices = list(super().__iter__())[:self.samples_per_epoch]
        return iter(indices[self.start_sample:])

    def __len__(self):
        return self.samples_per_epoch - self.start_sample


class UnpaddedDistributedSampler(torch.utils.data.Sampler):
    """Rank r gets samples r, r + world, r + 2*world, ...: every sample exactly once over all ranks.

    torch's DistributedSampler pads with duplicates, which would count some validation images twice.
    """

    def __init__(self, dataset, num_replicas, rank):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# --------------------------------------------------------------------------------------------------
# RNG state (per rank) for exact resumption
# --------------------------------------------------------------------------------------------------

def capture_rng_state():
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and plain data."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_cached)),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states():
    """List of every rank's RNG state (collective: all ranks must call it)."""
    state = capture_rng_state()
    if not is_dist_avail_and_initialized():
        return [state]
    states = [None] * get_world_size()
    dist.all_gather_object(states, state)
    return states


# --------------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------------

# The original release pickled its argparse.Namespace into every checkpoint; that one harmless class is
# allowed in weights_only loading so those files load without the unsafe opt-in. It is allowed per load
# (a context manager), not process-wide: other code's safe_globals contexts remove on exit what they list.
RELEASE_CHECKPOINT_CLASSES = [argparse.Namespace]

_PERIODIC_NAME = re.compile(r'^checkpoint-(\d+)(?:-step(\d+))?\.pth$')


def checkpoint_name(epoch, step=None):
    """'checkpoint-{epoch}.pth' for a finished epoch, 'checkpoint-{epoch}-step{step}.pth' inside one."""
    return f'checkpoint-{epoch}.pth' if step is None else f'checkpoint-{epoch}-step{step}.pth'


def list_periodic_checkpoints(output_dir):
    """[(position, path)] sorted oldest first; position = (epoch, step), a finished epoch sorts last."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(output_dir), 'checkpoint-*.pth')):
        match = _PERIODIC_NAME.match(os.path.basename(path))
        if match:
            epoch, step = int(match.group(1)), match.group(2)
            found.append(((epoch, float('inf') if step is None else int(step)), path))
    return sorted(found)


def find_latest_checkpoint(output_dir):
    """Path of the newest periodic checkpoint in output_dir, or None ('' means no output dir)."""
    if not output_dir:
        return None
    found = list_periodic_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir, keep_epochs):
    """Keep the newest `keep_epochs` epoch checkpoints and only a step checkpoint newer than all of them."""
    found = list_periodic_checkpoints(output_dir)
    epoch_files = [path for position, path in found if position[1] == float('inf')]
    doomed = epoch_files[:-keep_epochs] if keep_epochs > 0 else epoch_files
    doomed += [path for position, path in found[:-1] if position[1] != float('inf')]
    for path in doomed:
        os.remove(path)


def remove_stale_temporaries(output_dir):
    """Delete half-written checkpoint files left by a process killed while saving."""
    for path in glob.glob(os.path.join(glob.escape(output_dir), '.*.pth.tmp*')):
        os.remove(path)


def save_on_master(obj, path):
    """Atomically write obj to path on rank 0: temporary file, fsync, then os.replace."""
    if not is_main_process():
        return
    directory, name = os.path.split(path)
    tmp_path = os.path.join(directory, f'.{name}.tmp{os.getpid()}')
    with open(tmp_path, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def to_plain_data(value):
    """Convert args values to types torch.load(weights_only=True) accepts (dicts, lists, scalars)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(key): to_plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain_data(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_checkpoint_file(path, unsafe=False):
    """Read a checkpoint (local path or https URL) onto the CPU.

    Only tensors and plain data are unpickled (weights_only=True; argparse.Namespace, which the
    original release stored, is allowed too). Anything else is refused unless `unsafe` is set
    (--unsafe_load_checkpoint true), because unpickling can run arbitrary code.
    """
    try:
        with torch.serialization.safe_globals(RELEASE_CHECKPOINT_CLASSES):
            if path.startswith('https://') or path.startswith('http://'):
                return torch.hub.load_state_dict_from_url(path, map_location='cpu', check_hash=True,
                                                          weights_only=not unsafe)
            if not os.path.isfile(path):
                raise FileNotFoundError(f'checkpoint file {path} does not exist')
            return torch.load(path, map_location='cpu', weights_only=not unsafe)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1]
        raise CheckpointError(
            f'{path} contains Python objects other than tensors and plain data ({reason}). '
            'Loading it could run arbitrary code; if you trust the file, add '
            '--unsafe_load_checkpoint true') from error
    except (RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f'{path} is truncated or corrupt ({reason}); it was probably being written when its '
            'process was killed. Use an older checkpoint.') from error


def _limited(items, limit=10):
    shown = ', '.join(str(item) for item in items[:limit])
    return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')


def load_model_state(model, state_dict, strict, source):
    """Load state_dict into model, with a message listing every difference when it does not fit.

    Shape mismatches are always an error. With strict=True missing or unexpected keys are errors too;
    otherwise they are returned as (missing, unexpected) for the caller to report.
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}'
                  for key, value in state_dict.items()
                  if key in own and hasattr(value, 'shape') and value.shape != own[key].shape]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f'{source} does not fit the model {type(model).__name__} (was it saved from another '
                 '--model or other --model_overrides?):']
        if mismatched:
            lines.append(f'  {len(mismatched)} shape mismatches: {_limited(mismatched)}')
        if missing:
            lines.append(f'  {len(missing)} keys missing from the checkpoint: {_limited(missing)}')
        if unexpected:
            lines.append(f'  {len(unexpected)} unexpected keys in the checkpoint: {_limited(unexpected)}')
        raise CheckpointError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=False)
    return missing, unexpected


def select_model_state(checkpoint, model_key='model|module', model_prefix=''):
    """The model state_dict inside a checkpoint: first of the '|'-separated keys present, else the
    whole dict (a bare state_dict); with model_prefix, keep only keys under that prefix, stripped."""
    state_dict = checkpoint
    for key in model_key.split('|'):
        if key in checkpoint:
            print(f'Load state_dict by model_key = {key}')
            state_dict = checkpoint[key]
            break
    if model_prefix:
        state_dict = {key[len(model_prefix):]: value for key, value in state_dict.items()
                      if key.startswith(model_prefix)}
    return state_dict


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
