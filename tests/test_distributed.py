"""Several ranks, one run: the EMA and the "best" decision agree across ranks, srun's variables start one
run, stop requests are agreed at every long point of an epoch and resume exactly, requeues and --eval leave a
run's files alone, and collectives are entered by all ranks (a rank without samples, an unreadable batch)."""
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import main
import run_with_submitit
import utils
from slurm_cluster import LocalSlurmCluster, why_slurm_unavailable
from datasets import RankAgreedBatches, UnreadableBatchError, collate_skipping_corrupt
from train_helpers import (REPO_ROOT, SIGKILL_AFTER_CHECKPOINT, TINY_UNIREPLKNET, assert_resumed_from,
                           assert_same_training_state, assert_succeeded, free_port, load_checkpoint, make_tiny_dataset,
                           read_log, run_main, subprocess_env, tiny_data_args)

QUICKSTART = ['--config', os.path.join(REPO_ROOT, 'configs', 'quickstart_digits.yaml')]
DRIVER = os.path.join(REPO_ROOT, 'tests', 'stop_signal_driver.py')


# ---------------------------------------------------------------- fast: options, launcher, files

def unset_for_this_test(monkeypatch, *names):
    """Remove environment variables; the code under test may set them, and they are removed again afterwards."""
    for name in names:
        monkeypatch.setenv(name, '')  # so that monkeypatch records them (delenv alone does not when unset)
        monkeypatch.delenv(name)


def slurm_environment(monkeypatch, procid, ntasks, nodelist='node[03-04]'):
    unset_for_this_test(monkeypatch, 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
    for name, value in dict(SLURM_PROCID=procid, SLURM_NTASKS=ntasks, SLURM_LOCALID=procid, SLURM_JOB_ID='4242',
                            SLURM_JOB_NODELIST=nodelist, SLURM_JOB_NUM_NODES='2').items():
        monkeypatch.setenv(name, str(value))


def test_srun_task_takes_rank_world_size_and_master_from_slurm(monkeypatch):
    slurm_environment(monkeypatch, procid=1, ntasks=2)
    assert utils.slurm_task_layout(requested_world_size=None) == (1, 2, 1)
    assert os.environ['MASTER_ADDR'] == 'node03'  # the first node of node[03-04]
    assert 20000 <= int(os.environ['MASTER_PORT']) <= 60000  # the same on every task: derived from the job id


def test_world_size_that_disagrees_with_srun_is_an_error(monkeypatch):
    slurm_environment(monkeypatch, procid=0, ntasks=2)
    args = main.parse_args(['--device', 'cpu', '--world_size', '4'])
    with pytest.raises(ValueError, match='--world_size 4 disagrees with the launcher, which started 2 processes'):
        utils.init_distributed_mode(args)


def test_world_size_without_a_launcher_is_an_error(monkeypatch):
    unset_for_this_test(monkeypatch, 'RANK', 'WORLD_SIZE', 'SLURM_PROCID', 'SLURM_NTASKS')
    with pytest.raises(ValueError, match='--world_size 2, but no launcher started this process'):
        utils.init_distributed_mode(main.parse_args(['--device', 'cpu', '--world_size', '2']))


def task_args_after(tmp_path, monkeypatch, requeues, restart_count, write_newer):
    """run_with_submitit's per-task arguments of a job submitted with --resume OLD into output_dir."""
    old = tmp_path / 'pretrained' / 'checkpoint-5.pth'
    old.parent.mkdir()
    old.write_bytes(b'')
    output_dir = tmp_path / 'run'
    output_dir.mkdir(exist_ok=True)
    if write_newer:
        newer = output_dir / 'checkpoint-6-step3.pth'
        newer.write_bytes(b'')
        os.utime(newer, (old.stat().st_mtime + 10, old.stat().st_mtime + 10))
    monkeypatch.setenv('SLURM_RESTART_COUNT', str(restart_count))
    train_args = main.parse_args(['--device', 'cpu', '--resume', str(old), '--output_dir', str(output_dir),
                                  '--auto_resume', 'false'])
    trainer = run_with_submitit.Trainer(train_args, str(tmp_path / 'job'), requeues=requeues)
    job_env = SimpleNamespace(job_id='7', global_rank=0, num_tasks=1, local_rank=0)
    unset_for_this_test(monkeypatch, 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')
    return trainer._task_args(job_env), str(old)


@pytest.mark.parametrize('requeues, restart_count', [(1, 0), (0, 1)], ids=['submitit_requeue', 'slurm_requeue'])
def test_requeue_drops_a_resume_older_than_the_runs_checkpoints(tmp_path, monkeypatch, requeues, restart_count):
    args, _ = task_args_after(tmp_path, monkeypatch, requeues, restart_count, write_newer=True)
    assert args.resume == '' and args.auto_resume is True


def test_requeue_of_a_restart_at_an_older_checkpoint_continues_the_restarted_run(tmp_path, monkeypatch):
    """--resume run/checkpoint-5.pth while run/ still holds checkpoint-9.pth of the abandoned run: after a requeue the
    job continues from what it wrote itself (checkpoint-6-step3.pth), not from checkpoint-9.pth, the newest position."""
    output_dir = tmp_path / 'run'
    abandoned = output_dir / 'checkpoint-9.pth'
    output_dir.mkdir()
    abandoned.write_bytes(b'')
    os.utime(abandoned, (1, 1))
    args, _ = task_args_after(tmp_path, monkeypatch, requeues=1, restart_count=0, write_newer=True)
    assert args.resume == str(output_dir / 'checkpoint-6-step3.pth')


def test_first_start_keeps_resume_even_below_newer_checkpoints(tmp_path, monkeypatch):
    args, old = task_args_after(tmp_path, monkeypatch, requeues=0, restart_count=0, write_newer=True)
    assert args.resume == old  # the user's choice, possibly an older file on purpose


def test_requeue_before_any_checkpoint_keeps_resume(tmp_path, monkeypatch):
    args, old = task_args_after(tmp_path, monkeypatch, requeues=1, restart_count=0, write_newer=False)
    assert args.resume == old and args.auto_resume is True


def test_eval_leaves_temporaries_alone(tmp_path):
    """--eval may look at a directory a training run is writing into: no temporary is touched, not even a dead
    writer's (the training's next start removes that one)."""
    import socket
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    temporaries = [f'.checkpoint-3.pth.tmp.{socket.gethostname()}.{pid}' for pid in (os.getpid(), process.pid)]
    for name in temporaries:
        (tmp_path / name).write_bytes(b'half')
    args = main.parse_args([*QUICKSTART, '--model_overrides', TINY_UNIREPLKNET, '--eval', 'true',
                            '--output_dir', str(tmp_path), '--batch_size', '256'])
    main.main(args)
    assert sorted(os.listdir(tmp_path)) == sorted(temporaries)


def test_evaluation_collate_keeps_every_readable_sample():
    sample = (torch.zeros(3, 2, 2), 0)
    assert len(collate_skipping_corrupt([sample, None, sample, sample], keep_even=False)[1]) == 3


@pytest.mark.slow  # a subprocess
def test_workers_ignore_the_preemption_signal():
    """The DataLoader's worker_init_fn, in a child process: SIGUSR2 no longer ends it."""
    code = ('import os, signal, time, utils; utils.ignore_stop_signals(0); os.kill(os.getpid(), signal.SIGUSR2); '
            'time.sleep(0.1); print("alive")')
    completed = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=subprocess_env(),
                               stdout=subprocess.PIPE, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.strip() == 'alive'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the CUDA generators exist only with a GPU')
def test_seeded_random_state_restores_the_cuda_generators():
    from datasets import seeded_random_state
    torch.cuda.init()
    before = torch.cuda.get_rng_state_all()
    with seeded_random_state(123):
        torch.randn(4, device='cuda')
    assert all(torch.equal(a, b) for a, b in zip(before, torch.cuda.get_rng_state_all()))


# ---------------------------------------------------------------- 2 gloo ranks in this test's processes

def two_rank_checks(rank, init_file, results):
    """One gloo rank: (1) the EMA after one DDP step, (2) a forecasting evaluation where rank 1 has no windows,
    (3) an unreadable batch on rank 1 only, in training and in evaluation."""
    import modalities.time_series  # noqa: F401
    from engine import Precision
    from tasks import ForecastingTask

    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        # (1) main.py seeds every rank differently before building the model (as the release did).
        main.seed_everything(rank)
        args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET,
                                '--nb_classes', '3', '--model_ema', 'true', '--model_ema_decay', '0.5'])
        model = main.build_model(args)
        own_init = model.head.weight.detach().clone()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        ema = utils.ModelEma(model, decay=args.model_ema_decay)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        images, targets = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))  # each rank its own batch
        torch.nn.functional.cross_entropy(ddp(images), targets).backward()
        optimizer.step()
        ema.update(model)
        ema_states = [None, None]
        torch.distributed.all_gather_object(ema_states, ema.module.state_dict())
        inits = [None, None]
        torch.distributed.all_gather_object(inits, own_init)

        # (2) 3 windows over 2 ranks, batch 2: rank 0 evaluates them all, rank 1 has none.
        class Windows(torch.utils.data.Dataset):
            def __len__(self):
                return 3 if rank == 0 else 0

            def __getitem__(self, index):
                return torch.full((4,), float(index)), torch.full((2,), float(index) + 1)

        task = ForecastingTask(baselines=lambda samples: {'last': samples[:, -1:].expand(-1, 2)})
        forecaster = torch.nn.Linear(4, 2)
        torch.nn.init.constant_(forecaster.weight, 0.25)
        torch.nn.init.constant_(forecaster.bias, 0.0)
        loader = torch.utils.data.DataLoader(Windows(), batch_size=2)
        forecast_stats = task.evaluate(loader, forecaster, torch.device('cpu'), Precision('cpu', False),
                                       distributed=True)

        # (3) rank 1's second batch is unreadable (in evaluation rank 1 has a batch more than rank 0).
        outcomes = []
        for every_batch in (True, False):
            agreed = RankAgreedBatches(FailingLoader(3 if rank == 0 else 4, bad=1 if rank == 1 else -1),
                                       torch.device('cpu'), every_batch=every_batch)
            seen = 0
            try:
                for _ in agreed:
                    seen += 1
                outcomes.append(('finished', seen))
            except UnreadableBatchError as error:
                outcomes.append((str(error), seen))
        results[rank] = (ema_states, inits, forecast_stats, outcomes)
    finally:
        torch.distributed.destroy_process_group()


class FailingLoader:
    """A loader of `count` batches whose batch number `bad` raises UnreadableBatchError (as a DataLoader
    re-raises collate_skipping_corrupt's error)."""

    def __init__(self, count, bad):
        self.count, self.bad = count, bad

    def __len__(self):
        return self.count

    def __iter__(self):
        for index in range(self.count):
            if index == self.bad:
                raise UnreadableBatchError('All 2 images of a batch were unreadable')
            yield index


@pytest.mark.slow  # two gloo processes
def test_two_ranks_share_the_ema_and_enter_every_collective_together(tmp_path):
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(two_rank_checks, args=(str(tmp_path / 'rendezvous'), results), nprocs=2, join=True)
    (emas, inits, forecast_0, outcomes_0), (_, _, forecast_1, outcomes_1) = results[0], results[1]
    assert not torch.equal(inits[0], inits[1])  # the ranks did build different weights
    for key in emas[0]:  # parameters and BatchNorm statistics, after one step on different batches
        assert torch.equal(emas[0][key], emas[1][key]), key
    # The forecasting evaluation: both ranks return the numbers of all 3 windows.
    assert forecast_0 == forecast_1 and forecast_0['num_values'] == 6
    # Training agrees after each batch: rank 0 stops after its first batch too, rank 1 yielded its first.
    assert outcomes_1[0] == ('All 2 images of a batch were unreadable', 1)
    assert outcomes_0[0] == ('another rank met a batch of unreadable images (see its error)', 1)
    # Evaluation skips the batch and agrees at the end: both ranks read what they could, then stop.
    assert outcomes_1[1] == ('All 2 images of a batch were unreadable', 1)
    assert outcomes_0[1] == ('another rank met a batch of unreadable images (see its error)', 3)


# ---------------------------------------------------------------- 2 ranks of main.py (subprocesses)

def start_ranks(argv, log_dir, name, per_rank_env, command=None):
    """Start main.py (or `command`) as 2 processes with per-rank environments; returns their Popens."""
    processes = []
    for rank in range(2):
        env = subprocess_env()
        env.update(per_rank_env(rank))
        log = open(os.path.join(log_dir, f'{name}_rank{rank}.log'), 'w')
        processes.append(subprocess.Popen([*(command or [sys.executable, os.path.join(REPO_ROOT, 'main.py')]),
                                           *argv], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def torchrun_env(port):
    return lambda rank: dict(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                             MASTER_PORT=str(port))


def wait_all(processes, timeout=300):
    deadline = time.time() + timeout
    codes = []
    for process in processes:
        codes.append(process.wait(timeout=max(1, deadline - time.time())))
    return codes


def rank_log(log_dir, name, rank):
    with open(os.path.join(log_dir, f'{name}_rank{rank}.log')) as f:
        return f.read()


@pytest.mark.slow  # two processes, 2 short epochs of the quickstart
def test_ema_evaluation_without_dist_eval_finishes_and_keeps_the_best_files_one_process_agrees_with(tmp_path):
    """The issue's reproduction (it hung: each rank scored its own EMA and only some entered the checkpoint
    write), shrunk: 2 epochs of a smaller quickstart model."""
    output_dir = str(tmp_path / 'run')
    argv = [*QUICKSTART, '--model_overrides', TINY_UNIREPLKNET, '--epochs', '2', '--batch_size', '64',
            '--model_ema', 'true', '--model_ema_eval', 'true', '--model_ema_decay', '0.9', '--dist_eval', 'false',
            '--output_dir', output_dir]
    assert_succeeded(run_main(argv, nproc=2))
    log = read_log(output_dir)
    for suffix, key, best_key in (('best', 'test_acc1', 'max_accuracy'),
                                  ('best-ema', 'test_acc1_ema', 'max_accuracy_ema')):
        scores = [line[key] for line in log]
        best = load_checkpoint(os.path.join(output_dir, f'checkpoint-{suffix}.pth'))
        assert best['epoch'] == scores.index(max(scores)) and best[best_key] == max(scores)
    # One process evaluating the best EMA file sees the accuracy the 2-rank run decided on.
    completed = run_main([*QUICKSTART, '--model_overrides', TINY_UNIREPLKNET, '--eval', 'true', '--model_ema', 'true',
                          '--model_ema_eval', 'true', '--resume', os.path.join(output_dir, 'checkpoint-best-ema.pth')])
    assert_succeeded(completed)
    best_ema = max(line['test_acc1_ema'] for line in log)
    assert re.search(rf'Accuracy of the EMA model on 360 test images: {best_ema:.5f}%', completed.stdout), \
        completed.stdout[-2000:]


STOP_ARGV_EPOCHS = 2


@pytest.fixture(scope='module')
def two_rank_runs(tmp_path_factory):
    """Tiny 2-rank runs with EMA (evaluated over both ranks), and the uninterrupted one to compare with."""
    base = tmp_path_factory.mktemp('two_rank')
    train_dir, val_dir = make_tiny_dataset(str(base / 'data'))
    argv = ['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, *tiny_data_args(train_dir, val_dir),
            '--batch_size', '4', '--epochs', str(STOP_ARGV_EPOCHS), '--warmup_steps', '2', '--mixup', '0.3',
            '--cutmix', '0.3', '--drop_path', '0.1', '--model_ema', 'true', '--model_ema_eval', 'true',
            '--model_ema_decay', '0.9', '--save_ckpt_every_steps', '1']
    uninterrupted = str(base / 'uninterrupted')
    codes = wait_all(start_ranks([*argv, '--output_dir', uninterrupted], str(base), 'uninterrupted',
                                 torchrun_env(free_port())))
    assert codes == [0, 0], rank_log(str(base), 'uninterrupted', 0)[-3000:]
    return SimpleNamespace(argv=argv, base=base, uninterrupted=uninterrupted)


def assert_resumed_like_the_uninterrupted_run(runs, output_dir, name):
    codes = wait_all(start_ranks([*runs.argv, '--output_dir', output_dir], str(runs.base), name,
                                 torchrun_env(free_port())))
    assert codes == [0, 0], rank_log(str(runs.base), name, 0)[-3000:]
    final = f'checkpoint-{STOP_ARGV_EPOCHS - 1}.pth'
    assert_same_training_state(os.path.join(output_dir, final), os.path.join(runs.uninterrupted, final))
    resumed, expected = read_log(output_dir), read_log(runs.uninterrupted)
    assert [line['epoch'] for line in resumed] == list(range(STOP_ARGV_EPOCHS))
    for key in ('test_acc1_ema', 'test_loss_ema', 'test_acc1', 'test_loss'):
        assert [line[key] for line in resumed] == [line[key] for line in expected], key


@pytest.mark.slow  # two processes, SIGKILLed and resumed
def test_killed_two_rank_run_with_ema_resumes_bitwise_equal(two_rank_runs):
    """Rank 0 is SIGKILLed right after writing a step checkpoint (checkpoint.py's test hook), rank 1 then, and the
    run is resumed on 2 ranks."""
    runs, output_dir, killed_after = two_rank_runs, str(two_rank_runs.base / 'killed'), 'checkpoint-0-step3.pth'
    port = free_port()
    processes = start_ranks([*runs.argv, '--output_dir', output_dir], str(runs.base), 'killed',
                            lambda rank: {**torchrun_env(port)(rank), SIGKILL_AFTER_CHECKPOINT: killed_after})
    assert processes[0].wait(timeout=300) == -signal.SIGKILL, rank_log(str(runs.base), 'killed', 0)[-3000:]
    processes[1].kill()
    processes[1].wait()
    assert_resumed_like_the_uninterrupted_run(runs, output_dir, 'killed_resumed')
    assert_resumed_from(rank_log(str(runs.base), 'killed_resumed', 0), output_dir, killed_after)


@pytest.mark.slow  # two processes, stopped and resumed
@pytest.mark.parametrize('point, stopped_at, checkpoint_written', [
    ('evaluation', 'before the EMA evaluation', 'checkpoint-0-step6.pth'),
    ('epoch_checkpoint', 'after the checkpoint of epoch 0', 'checkpoint-0.pth'),
])
def test_stop_signal_to_one_rank_stops_both_with_a_checkpoint_and_resumes_exactly(
        two_rank_runs, point, stopped_at, checkpoint_written):
    runs, output_dir = two_rank_runs, str(two_rank_runs.base / point)
    processes = start_ranks([point, *runs.argv, '--output_dir', output_dir], str(runs.base), point,
                            torchrun_env(free_port()), command=[sys.executable, DRIVER])
    assert wait_all(processes) == [3, 3], rank_log(str(runs.base), point, 1)[-3000:]
    assert f'Stop requested: stopping {stopped_at}' in rank_log(str(runs.base), point, 0)
    assert checkpoint.find_latest_checkpoint(output_dir) == os.path.join(output_dir, checkpoint_written)
    assert_resumed_like_the_uninterrupted_run(runs, output_dir, f'{point}_resumed')


@pytest.mark.slow  # two processes
def test_early_stop_signal_on_one_rank_stops_both_after_the_distributed_start(two_rank_runs, tmp_path):
    """The launcher turns a signal that came while main.py was imported into a stop request: rank 1 has one,
    rank 0 not; both must stop right after joining the process group (rank 0 used to wait there)."""
    runs, output_dir = two_rank_runs, str(tmp_path / 'early')
    processes = start_ranks(['start', *runs.argv, '--output_dir', output_dir], str(tmp_path), 'early',
                            torchrun_env(free_port()), command=[sys.executable, DRIVER])
    assert wait_all(processes, timeout=120) == [3, 3], rank_log(str(tmp_path), 'early', 0)[-3000:]
    assert 'Stop requested: stopping after the distributed start' in rank_log(str(tmp_path), 'early', 0)
    assert checkpoint.find_latest_checkpoint(output_dir) is None


@pytest.mark.slow  # two processes
def test_srun_tasks_without_world_size_train_one_two_rank_run(two_rank_runs, tmp_path):
    """Two processes carrying only what `srun -n 2` sets (no RANK/WORLD_SIZE, no --world_size) form one run."""
    runs, output_dir = two_rank_runs, str(tmp_path / 'srun')
    port = free_port()

    def srun_env(rank):
        return dict(SLURM_PROCID=str(rank), SLURM_NTASKS='2', SLURM_LOCALID=str(rank), SLURM_JOB_ID='77',
                    SLURM_JOB_NODELIST='localhost', SLURM_JOB_NUM_NODES='1', MASTER_PORT=str(port))
    codes = wait_all(start_ranks([*runs.argv, '--epochs', '1', '--output_dir', output_dir], str(tmp_path), 'srun',
                                 srun_env))
    assert codes == [0, 0], rank_log(str(tmp_path), 'srun', 1)[-3000:]
    assert 'distributed init (rank 1, world 2, gloo)' in rank_log(str(tmp_path), 'srun', 1)
    saved = load_checkpoint(os.path.join(output_dir, 'checkpoint-0.pth'))
    assert saved['args']['world_size'] == 2 and len(saved['rng_states']) == 2


@pytest.mark.slow  # a real local SLURM (skipped where slurmctld/slurmd cannot run), two tasks
def test_real_srun_with_two_tasks_trains_one_two_rank_run(two_rank_runs, tmp_path):
    reason = why_slurm_unavailable()
    if reason:
        pytest.skip(reason)
    output_dir = str(tmp_path / 'srun')
    with LocalSlurmCluster(tmp_path / 'slurm') as cluster:
        env = {**cluster.env(), **{name: value for name, value in subprocess_env().items() if name != 'PATH'}}
        completed = subprocess.run(
            ['srun', '--ntasks', '2', '--cpus-per-task', '1', '--label', sys.executable,
             os.path.join(REPO_ROOT, 'main.py'), *two_rank_runs.argv, '--epochs', '1', '--output_dir', output_dir],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-4000:]
    assert 'distributed init (rank 1, world 2, gloo)' in completed.stdout
    saved = load_checkpoint(os.path.join(output_dir, 'checkpoint-0.pth'))
    assert saved['args']['world_size'] == 2 and len(saved['rng_states']) == 2
