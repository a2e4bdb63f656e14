"""Training utilities: distributed setup, stop requests, samplers and small helpers.

Used by main.py, engine.py and run_with_submitit.py. Metric logging lives in metric_logging.py,
checkpoint files and RNG states in checkpoint.py.

Distributed setup follows the original release (DeiT/ConvNeXt lineage): OpenMPI variables with
``--dist_on_itp``, else RANK/WORLD_SIZE from torchrun or torch.distributed.launch, else SLURM_PROCID
(as set by SLURM and submitit), else a single process. CUDA devices use NCCL, CPU uses gloo.

Stop requests (preemption): a signal handler calls ``request_stop()``; the training loop checks
``stop_requested()`` at every optimizer update, agrees on it across ranks, writes a step checkpoint and
raises ``TrainingInterrupted``.
"""
import argparse
import builtins
import datetime
import os

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
