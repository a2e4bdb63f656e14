"""run_with_submitit.py: dry-run plans of the README's multi-node commands, and real requeues that resume exactly.

The requeue tests submit a tiny CPU training (main.py on DIGITS, a 4-block UniRepLKNet, 2 gloo ranks,
`--ngpus 0 --tasks_per_node 2`) through run_with_submitit.py, interrupt it twice, and check that the job
requeued itself, finished, and ended with exactly the weights of an uninterrupted run of the same command
(one run on the LocalExecutor, started beside the first requeue test and shared by both).
- submitit's LocalExecutor (always runs): SIGUSR2 is sent to every task, as SLURM does, once at the
  first step checkpoint and once at a step checkpoint of the requeued run (submitit counts both as
  timeouts, as it does for any signal under a limit shorter than 12 minutes).
- A real SLURM started on localhost (tests/slurm_cluster.py; skipped with the reason when it cannot be
  installed or started): preemption through `job._interrupt()` at the first step checkpoint, then SLURM's
  own time-limit signal in the requeued run (its limit cut to 1-2 minutes), then the job runs to the end;
  each run logs SLURM_RESTART_COUNT.
"""
import os
import re
import shlex
import shutil
import signal
import time

import pytest
import submitit
import torch

import run_with_submitit
from conftest import skip_unless_ci
from slurm_cluster import LocalSlurmCluster, why_slurm_unavailable

TINY_MODEL = "{depths: [1, 1, 1, 1], dims: [8, 16, 32, 64], kernel_sizes: [[3], [7], [7], [3]]}"
# 1437 DIGITS training images / (2 ranks x 16) = 44 optimizer steps per epoch.
TINY_TRAINING = [
    "--model", "unireplknet_a", "--model_overrides", TINY_MODEL, "--data_set", "DIGITS", "--input_size", "32",
    "--batch_size", "16", "--warmup_epochs", "0", "--device", "cpu", "--num_workers", "0",
    "--disable_eval", "true", "--save_ckpt_every_steps", "10",
    # RandAugment off: timm's 'inc1' posterize can ask Pillow for 0 bits, which Pillow 13 rejects.
    "--aa", "none",
]
EPOCHS = 2
TWO_CPU_RANKS = ["--nodes", "1", "--ngpus", "0", "--tasks_per_node", "2"]
REQUEUE_MESSAGE = "training stopped for a timeout or preemption; requeuing"  # logged by rank 0


def submit(job_dir, *launcher_argv):
    argv = [*TWO_CPU_RANKS, "--job_dir", f"{job_dir}/%j", *launcher_argv, *TINY_TRAINING, "--epochs", str(EPOCHS)]
    # Two ranks (and the reference run beside them) on a small machine: one thread each.
    with submitit.helpers.environment_variables(OMP_NUM_THREADS="1"):
        return run_with_submitit.main(argv)


def wait_for(condition, deadline, what):
    """Poll condition until it holds; the test's deadline (time.time() value) is its outer timeout."""
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"ran out of the test's time budget waiting for {what}")
        time.sleep(0.5)


def finish(job, deadline):
    wait_for(lambda: job.done(force_check=True), deadline, f"job {job.job_id} to finish")
    return job.results()


def log_of(job, rank):
    path = job.task(rank).paths.stdout
    return path.read_text() if path.exists() else ""


def final_weights(job):
    output_dir = job.paths.folder  # output_dir defaults to the job dir with %j expanded
    checkpoint = torch.load(output_dir / f"checkpoint-{EPOCHS - 1}.pth", map_location="cpu", weights_only=True)
    return checkpoint["model"]


def assert_same_weights(resumed, uninterrupted):
    assert resumed.keys() == uninterrupted.keys()
    different = [name for name in resumed if not torch.equal(resumed[name], uninterrupted[name])]
    assert not different, f"requeued run differs from the uninterrupted run in {different}"


def step_checkpoints(job):
    return {path.name for path in job.paths.folder.glob("checkpoint-*-step*.pth")}


def task_pids(job, requeues):
    """PIDs of the tasks of one run of the job (each task logs its pid when it starts)."""
    pattern = re.compile(rf"requeues_by_launcher={requeues} pid=(\d+)")
    return [int(match) for rank in range(2) for match in pattern.findall(log_of(job, rank))]


def signal_tasks(pids, signum):
    """Send signum to each task still alive (checked by its command line, so a reused pid is never hit)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"submitit" not in cmdline.read():
                    continue
            os.kill(pid, signum)
        except (FileNotFoundError, ProcessLookupError):
            pass  # that run already ended


# ------------------------------------------------------------------------------------------------
# --dry_run: the README's ImageNet-22K pretraining commands
# ------------------------------------------------------------------------------------------------
# The README's 22K commands as intended (its copies lack two line-continuation backslashes).
README_22K_S = """--nodes 2 --ngpus 8 --model unireplknet_s --drop_path 0.1 --batch_size 32 --lr 4e-3 --update_freq 8
    --warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true
    --data_path /path/to/imagenet-22k --job_dir /shared/results/%j"""
README_22K_XL = """--nodes 4 --ngpus 8 --model unireplknet_xl --drop_path 0.2 --batch_size 32 --lr 1e-3 --update_freq 4
    --input_size 192 --warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841
    --disable_eval true --data_path /path/to/imagenet-22k --job_dir /shared/results/%j"""


@pytest.mark.parametrize("command, nodes, world_size, per_rank_batch, update_freq", [
    (README_22K_S, 2, 16, 32, 8),
    (README_22K_XL, 4, 32, 32, 4),
])
def test_dry_run_shows_tasks_gpus_and_batches_of_the_readme_commands(
        command, nodes, world_size, per_rank_batch, update_freq, capsys, tmp_path):
    argv = shlex.split(command) + ["--dry_run"]
    assert run_with_submitit.main(argv) is None
    plan = capsys.readouterr().out
    assert f"  nodes: {nodes}\n" in plan
    assert "  tasks_per_node: 8\n" in plan and "  gpus_per_node: 8\n" in plan
    assert f"world_size {world_size} = {nodes} nodes x 8 tasks per node" in plan
    total = world_size * per_rank_batch * update_freq
    assert f"per-rank {per_rank_batch} x update_freq {update_freq} x world_size {world_size} = total batch {total}" in plan
    assert total == 4096  # the paper's 22K pretraining batch
    assert "  --output_dir /shared/results/%j\n" in plan
    assert not list(tmp_path.iterdir()) and not os.path.exists("/shared/results"), "a dry run must not create folders"


@pytest.mark.parametrize("command, nodes", [(README_22K_S, 2), (README_22K_XL, 4)])
def test_readme_commands_become_the_right_sbatch_parameters(command, nodes, tmp_path):
    """The parameters are accepted by submitit and become the right sbatch options; a generic cluster
    gets no partition and no constraint unless asked."""
    if shutil.which("srun") is None:
        skip_unless_ci("submitit's SLURM executor needs srun (SLURM client tools: apt-get install slurm-client)")
    launcher_args, _ = run_with_submitit.parse_args(shlex.split(command))
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(**run_with_submitit.executor_parameters(launcher_args))
    sbatch = executor.parameters
    assert (sbatch["nodes"], sbatch["ntasks_per_node"], sbatch["gpus_per_node"]) == (nodes, 8, 8)
    assert sbatch["time"] == 72 * 60 and sbatch["signal_delay_s"] == 120
    assert "partition" not in sbatch and "constraint" not in sbatch and "mem" not in sbatch


def test_cluster_options_map_to_sbatch_parameters():
    launcher_args, _ = run_with_submitit.parse_args(shlex.split(
        "--nodes 2 --ngpus 8 --use_volta32 --constraint a100|h100 --partition learnlab --account vision "
        "--qos high --exclude node[01-02] --comment 'deadline' --mem_gb 0 --timeout 0.5 --job_dir runs/%j"))
    params = run_with_submitit.executor_parameters(launcher_args)
    assert params["slurm_constraint"] == "(a100|h100)&volta32gb"
    assert (params["slurm_partition"], params["slurm_account"], params["slurm_qos"]) == ("learnlab", "vision", "high")
    assert (params["slurm_exclude"], params["slurm_comment"]) == ("node[01-02]", "deadline")
    assert params["mem_gb"] == 0 and params["timeout_min"] == 30
    assert run_with_submitit.job_dir_template(launcher_args) == os.path.abspath("runs/%j")


@pytest.mark.parametrize("argv, message", [
    ("--ngpus 0", "add --device cpu"),
    ("--ngpus 8 --tasks_per_node 2", "drop --tasks_per_node"),
    ("--ngpus 0 --device cpu --cluster local --nodes 2", "use --nodes 1"),
    ("--timeout 0.001", "at least 1 minute"),
    ("--save_ckpt false", "drop --save_ckpt false"),
    ("--no_such_option 1", "unrecognized arguments: --no_such_option"),
])
def test_contradictory_options_are_rejected_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        run_with_submitit.parse_args(shlex.split(argv))
    assert message in f"{error.value.code}{capsys.readouterr().err}"


# ------------------------------------------------------------------------------------------------
# Requeue on submitit's LocalExecutor
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The tiny training run once without interruption, on the LocalExecutor, beside the requeue tests."""
    job = submit(tmp_path_factory.mktemp("uninterrupted"), "--cluster", "local", "--timeout_min", "10")
    yield job
    job.cancel()


@pytest.mark.slow  # multi-process training jobs, killed and requeued
def test_local_executor_requeues_twice_and_resumes_exactly(tmp_path, uninterrupted_run):
    # A 5-minute limit: the LocalExecutor's own timeout signal (30 s before it) never comes, the test's
    # signals do; submitit counts every signal as a timeout for limits under 12 minutes.
    deadline = time.time() + 300
    job = submit(tmp_path / "interrupted", "--cluster", "local", "--timeout_min", "5", "--max_num_timeout", "3")
    try:
        for requeues in range(2):
            # Signal every task of the current run, as SLURM does, once it has written a step checkpoint.
            seen = step_checkpoints(job)
            wait_for(lambda: len(task_pids(job, requeues)) == 2 and step_checkpoints(job) - seen, deadline,
                     f"run {requeues} of the job to write a step checkpoint")
            signal_tasks(task_pids(job, requeues), signal.SIGUSR2)
            wait_for(lambda: f"requeues_by_launcher={requeues + 1}" in log_of(job, 0), deadline,
                     f"requeue {requeues + 1}")
        finish(job, deadline)
        finish(uninterrupted_run, deadline)
    finally:
        job.cancel()

    assert log_of(job, 0).count(REQUEUE_MESSAGE) == 2
    assert "requeues_by_launcher=2" in log_of(job, 1)
    assert "Not checkpointing nor requeuing since I am a slave" in log_of(job, 1)
    assert "requeues_by_launcher=1" not in log_of(uninterrupted_run, 0)
    assert_same_weights(final_weights(job), final_weights(uninterrupted_run))


# ------------------------------------------------------------------------------------------------
# Requeue on a real SLURM
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = why_slurm_unavailable()
    if reason:
        print(f"SLURM test skipped: {reason}")
        skip_unless_ci(reason)
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except RuntimeError as error:
        print(f"SLURM test skipped: {error}")
        pytest.skip(f"could not start a local SLURM: {error}")
    yield cluster
    cluster.stop()


def slurm_job_field(cluster, job, field):
    record = cluster.run("scontrol", "-o", "show", "job", job.job_id)
    return re.search(rf"\b{field}=(\S+)", record).group(1)


def set_time_limit(cluster, job, minutes):
    cluster.run("scontrol", "update", f"JobId={job.job_id}", f"TimeLimit={minutes}")


def has_pending_signal(pid, signum):
    """Whether a (stopped) process has signum pending, from the ShdPnd mask in /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line.split()[1] for line in status if line.startswith("ShdPnd:"))
    except FileNotFoundError:
        return False
    return bool(int(mask, 16) & (1 << (signum - 1)))


def second_run_log(job):
    return log_of(job, 0).partition("SLURM_RESTART_COUNT=1")[2]


def seconds(slurm_duration):
    """'[D-]HH:MM:SS' -> seconds."""
    days, _, clock = slurm_duration.rpartition("-")
    hours, minutes, secs = (int(part) for part in clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs


@pytest.mark.slow  # a real SLURM, multi-process training jobs, killed and requeued
def test_slurm_requeues_on_preemption_and_timeout_and_resumes_exactly(
        slurm_cluster, tmp_path, monkeypatch, uninterrupted_run):
    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm_cluster.env()[name])
    deadline = time.time() + 330
    job = submit(tmp_path / "interrupted", "--timeout_min", "10", "--max_num_timeout", "5", "--cpus_per_task", "1")

    # Preemption: submitit's test hook (scancel --signal TERM, then USR2) once training has begun.
    wait_for(lambda: step_checkpoints(job), deadline, "the first step checkpoint")
    job._interrupt()

    # Timeout: once the requeued run trains, its tasks are frozen (SIGSTOP, which SLURM does not see) and
    # its time limit is cut to 1-2 minutes from now. SLURM's next periodic check sends USR2 for the time
    # limit (with a SIGCONT), so the run is still training when it arrives however fast this machine is.
    # The limit goes back up before the run after that starts.
    wait_for(lambda: len(task_pids(job, 1)) == 2 and "Epoch: [" in second_run_log(job), deadline,
             "the requeued run to train")
    signal_tasks(task_pids(job, 1), signal.SIGSTOP)
    set_time_limit(slurm_cluster, job, seconds(slurm_job_field(slurm_cluster, job, "RunTime")) // 60 + 2)
    wait_for(lambda: REQUEUE_MESSAGE in second_run_log(job)
             or all(has_pending_signal(pid, signal.SIGUSR2) for pid in task_pids(job, 1)), deadline,
             "SLURM's time-limit signal")
    set_time_limit(slurm_cluster, job, 10)
    signal_tasks(task_pids(job, 1), signal.SIGCONT)  # in case this SLURM did not resume them itself

    finish(job, deadline)
    finish(uninterrupted_run, deadline)
    rank0 = log_of(job, 0)
    assert "SLURM_RESTART_COUNT=1" in rank0 and "SLURM_RESTART_COUNT=2" in rank0
    assert "SLURM_RESTART_COUNT=3" not in rank0
    assert rank0.count(REQUEUE_MESSAGE) == 2
    assert "Not checkpointing nor requeuing since I am a slave" in log_of(job, 1)
    assert_same_weights(final_weights(job), final_weights(uninterrupted_run))
