"""Training utilities: distributed setup, stop requests, samplers and small helpers.

Used by main.py, engine.py and run_with_submitit.py. Metric logging lives in metric_logging.py,
checkpoint files and RNG states in checkpoint.py.

Distributed setup follows the original release (DeiT/ConvNeXt lineage): OpenMPI variables with
``--dist_on_itp``, else RANK/WORLD_SIZE from torchrun or torch.distributed.launch, else SLURM's task
variables under ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the master from SLURM_JOB_NODELIST),
else a single process. CUDA devices use NCCL, CPU uses gloo.

One model state on every rank: DDP broadcasts rank 0's weights when it wraps the model, but each rank's
forward then updates its own BatchNorm statistics. `broadcast_buffers` gives every rank rank 0's, and
`ModelEma` (the EMA, also MESA's teacher) is built after the DDP wrap and takes rank 0's buffers before
each update, so every rank holds the EMA that rank 0 checkpoints.

Stop requests (preemption): a signal handler calls ``request_stop()``; the training loop checks
``stop_requested()`` at every optimizer update and main.py between the long parts of an epoch (after the
distributed start, before each evaluation, after the epoch checkpoint); the ranks agree on it, write a step
checkpoint and raise ``TrainingInterrupted``.
"""
import argparse
import builtins
import datetime
import os
import random
import signal

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3


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

    Priority: --dist_on_itp (OpenMPI), RANK/WORLD_SIZE (torchrun, torch.distributed.launch, run_with_submitit.py),
    SLURM's task variables (`srun python main.py`, see slurm_task_layout), else single process. dist_url may
    be 'env://', 'tcp://host:port' or 'file:///shared/path'. --world_size (default: unset) must agree with
    the launcher's world size when given.
    """
    env = os.environ
    requested_world_size = args.world_size
    if args.dist_on_itp:
        args.rank = int(env['OMPI_COMM_WORLD_RANK'])
        args.world_size = int(env['OMPI_COMM_WORLD_SIZE'])
        args.gpu = int(env['OMPI_COMM_WORLD_LOCAL_RANK'])
        args.dist_url = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    elif 'RANK' in env and 'WORLD_SIZE' in env:
        args.rank = int(env['RANK'])
        args.world_size = int(env['WORLD_SIZE'])
        args.gpu = int(env.get('LOCAL_RANK', 0))
    elif 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', requested_world_size or 1)) > 1:
        args.rank, args.world_size, args.gpu = slurm_task_layout(requested_world_size)
    else:
        if requested_world_size not in (None, 1):
            raise ValueError(f'--world_size {requested_world_size}, but no launcher started this process: '
                             'start the ranks with torchrun, srun or run_with_submitit.py (which set each '
                             'rank), or drop --world_size')
        print('Not using distributed mode')
        args.distributed = False
        args.rank, args.world_size, args.gpu = 0, 1, 0
        return
    if requested_world_size is not None and requested_world_size != args.world_size:
        raise ValueError(f'--world_size {requested_world_size} disagrees with the launcher, which started '
                         f'{args.world_size} processes; drop --world_size (the launcher sets it)')

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


def slurm_task_layout(requested_world_size):
    """(rank, world size, local rank) of a task started by `srun` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID);
    also exports MASTER_ADDR (the first node of SLURM_JOB_NODELIST) and MASTER_PORT (derived from the job id)
    for dist_url env://, unless they are set. SLURM_NTASKS is missing only in a job step that did not say how
    many tasks it runs; --world_size gives it then."""
    from submitit.slurm.slurm import SlurmJobEnvironment  # parses SLURM's node lists (node[01-04,07])

    env = os.environ
    if 'SLURM_NTASKS' not in env and requested_world_size is None:
        raise ValueError('SLURM_PROCID is set but SLURM_NTASKS is not: run the ranks with `srun --ntasks N`, '
                         'or pass --world_size N')
    env.setdefault('MASTER_ADDR', SlurmJobEnvironment().hostnames[0])
    # The same port on every task of the job, different for other jobs (submitit's TorchDistributedEnvironment
    # rule, which needs a job that submitit started).
    env.setdefault('MASTER_PORT', str(random.Random(env.get('SLURM_JOB_ID', '0')).randint(20000, 60000)))
    world_size = int(env['SLURM_NTASKS']) if 'SLURM_NTASKS' in env else requested_world_size
    local_rank = int(env['SLURM_LOCALID']) if 'SLURM_LOCALID' in env \
        else int(env['SLURM_PROCID']) % max(torch.cuda.device_count(), 1)
    return int(env['SLURM_PROCID']), world_size, local_rank


def broadcast_object(value, src=0):
    """`value` as rank `src` holds it, on every rank (any picklable value; collective)."""
    if not is_dist_avail_and_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(model):
    """Give every rank rank 0's buffers of `model` (BatchNorm statistics), one broadcast per dtype.

    Each rank's forward updates the statistics from its own batch; DDP only broadcasts rank 0's at the start
    of the next training forward. Evaluations and the EMA must see rank 0's (the checkpointed) ones now.
    """
    if not is_dist_avail_and_initialized():
        return
    by_dtype = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
        dist.broadcast(flat, src=0)
        for buffer, value in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
            buffer.copy_(value.view_as(buffer))


class ModelEma(ModelEmaV3):
    """timm's ModelEmaV3, identical on every rank: it takes rank 0's buffers before each update (see
    broadcast_buffers). Build it from the model after DDP has wrapped it (DDP broadcasts rank 0's weights)."""

    @torch.no_grad()
    def update(self, model, step=None):
        broadcast_buffers(model)
        super().update(model, step)


def sum_over_ranks(count: int, device) -> int:
    """An integer summed over all ranks (every rank must call this; one tiny all-reduce), or itself in one process."""
    if not is_dist_avail_and_initialized():
        return count
    total = torch.tensor(count, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


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


def ignore_stop_signals(_worker_id=None):
    """DataLoader `worker_init_fn`: workers ignore the preemption signal (SIGUSR2, or submitit's
    SUBMITIT_PREEMPT_SIGNAL). SLURM signals every process of the job; the training process stops at a step
    boundary and ends its workers, but a worker started by spawn or forkserver (fork copies the handler) would
    die of the signal's default action and fail the step before that."""
    for name in {'USR2', os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}:
        signal.signal(getattr(signal, f'SIG{name}'), signal.SIG_IGN)


def clear_stop_request():
    global _stop_requested
    _stop_requested = False


class TrainingInterrupted(Exception):
    """Raised by main() after a requested stop, once the step checkpoint is written on rank 0."""


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when any rank's loss is NaN or infinite; no checkpoint is written."""


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


class RepeatedAugmentationSampler(ResumableTrainSampler):
    """timm's RepeatAugSampler order over a datasets.RepeatedSamples (index i * repeats + k = copy k of sample i),
    resumable like ResumableTrainSampler.

    Each epoch shuffles the samples (seed + epoch), puts each one's `repeats` copies next to each other and deals
    that list out to the ranks in turn, so the copies of a sample are in the same step on different ranks (in the
    same batch on one process). Each rank keeps its first `samples_per_epoch`: an epoch has about as many samples
    as the data set, not `repeats` times as many.
    """

    def __init__(self, dataset, num_replicas, rank, seed, samples_per_epoch, repeats):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed,
                         samples_per_epoch=samples_per_epoch)
        self.repeats = repeats

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset) // self.repeats, generator=generator)
        copies = (order[:, None] * self.repeats + torch.arange(self.repeats)).flatten().tolist()
        total = -(-len(copies) // self.num_replicas) * self.num_replicas
        copies += copies[:total - len(copies)]
        return iter(copies[self.rank:total:self.num_replicas][:self.samples_per_epoch][self.start_sample:])


class RepeatedInBatchSampler(RepeatedAugmentationSampler):
    """Repeated augmentation as the release's video recipe (`num_sample` in Video/dataset/datasets.py, batches
    flattened by `multiple_samples_collate`), over a datasets.RepeatedSamples (index i * repeats + k = copy k of
    sample i), resumable like ResumableTrainSampler.

    Each epoch shuffles the samples (seed + epoch) and splits them over the ranks as DistributedSampler does; a rank
    yields each of its samples' `repeats` copies one after another, so with batches of batch_size x repeats the
    copies of a sample share one batch and an epoch covers every sample (repeats x as many copies). timm's sampler
    (RepeatedAugmentationSampler, whose options this one takes) has no such order, hence this one.
    """

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset) // self.repeats, generator=generator).tolist()
        total = -(-len(order) // self.num_replicas) * self.num_replicas
        order += order[:total - len(order)]
        mine = torch.tensor(order[self.rank:total:self.num_replicas])
        copies = (mine[:, None] * self.repeats + torch.arange(self.repeats)).flatten().tolist()
        return iter(copies[:self.samples_per_epoch][self.start_sample:])


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
