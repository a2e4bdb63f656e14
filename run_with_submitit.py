"""Launch main.py training on a SLURM cluster through submitit, with automatic requeue and exact resume.

Multi-node ImageNet-22K pretraining as in the UniRepLKNet training README (2 nodes x 8 GPUs for S/B/L,
4 nodes for XL). Every main.py option (and --config FILE.yaml) is accepted and forwarded; the options
below are added for the job itself. One task (= one rank) runs per GPU; `--ngpus 0` runs CPU ranks on gloo.

    python run_with_submitit.py --nodes 2 --ngpus 8 \
        --model unireplknet_s --drop_path 0.1 --batch_size 32 --lr 4e-3 --update_freq 8 \
        --warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true \
        --data_path /path/to/imagenet-22k --job_dir /shared/runs/%j

`--dry_run` prints the job parameters and the resolved main.py arguments (world size, per-rank and total
batch) without submitting.

Timeouts and preemption. SLURM sends SIGUSR2 `--signal_delay_s` seconds before the time limit, and on
preemption where the cluster is set up to signal jobs. submitit's own handler would call `checkpoint()`
synchronously, at an arbitrary point of a training step, so a checkpoint written there could capture a
half-applied optimizer update. Instead each task replaces that handler with `utils.request_stop`, which only
sets a flag. main.py stops at the next optimizer-update boundary (the ranks agree on which one), rank 0
writes a checkpoint of that step, and main() raises `utils.TrainingInterrupted`. Only then does the task
run submitit's original handler: on global rank 0 it calls `Trainer.checkpoint()` (a fresh Trainer with
auto-resume and a new rendezvous file), counts the timeout, requeues the job (same job id, hence the same
output directory) and exits; the other ranks exit without writing anything. The requeued job resumes from
that step checkpoint. A signal that arrives before training started (while main.py is being imported)
requeues at once. Requeued runs import the code found in this checkout when they restart.

To resume by hand (a cancelled job, or one out of --max_num_timeout), submit the same command with
--output_dir set to the old job's folder: auto-resume picks its newest checkpoint.
"""
import argparse
import copy
import os
import shlex
import signal
import sys
import uuid
from pathlib import Path

import submitit

# main.py and utils.py (torch, timm: seconds to import) are imported inside the functions that use them.
# The job unpickles this module's Trainer before submitit installs its signal handler; while that takes
# seconds, an early SIGUSR2 (a short time limit, a preemption) would kill the task with no requeue.
REPO_ROOT = Path(__file__).resolve().parent
# submitit's preemption signal: USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise.
PREEMPTION_SIGNAL = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def get_launcher_parser():
    parser = argparse.ArgumentParser("SLURM job options", add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("SLURM job (run_with_submitit.py)")
    group.add_argument("--nodes", type=int, default=2, help="number of nodes")
    group.add_argument("--ngpus", type=int, default=8,
                       help="GPUs per node; one task (rank) per GPU. 0 runs CPU ranks with gloo "
                            "(needs --device cpu; ranks per node from --tasks_per_node)")
    group.add_argument("--tasks_per_node", type=int, default=None,
                       help="ranks per node; default and only allowed value with GPUs: --ngpus; default 1 with --ngpus 0")
    group.add_argument("--timeout", type=float, default=72, help="time limit of each job run, in hours (fractions allowed)")
    group.add_argument("--timeout_min", type=int, default=None, help="time limit in minutes; overrides --timeout")
    group.add_argument("--job_name", default="unireplknet", help="SLURM job name")
    group.add_argument("--job_dir", default="",
                       help="folder for submitit logs, the rendezvous file and (unless --output_dir is given) the "
                            "checkpoints; %%j becomes the job id. Must be on a file system shared by all nodes. "
                            "Default: ./runs/<job_name>/%%j")
    group.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    group.add_argument("--use_volta32", action="store_true", help="request V100-32GB nodes (constraint volta32gb)")
    group.add_argument("--constraint", default=None, help="SLURM node constraint, e.g. 'a100|h100'")
    group.add_argument("--comment", default=None, help="SLURM job comment")
    group.add_argument("--account", default=None, help="SLURM account to charge")
    group.add_argument("--qos", default=None, help="SLURM quality of service")
    group.add_argument("--exclude", default=None, help="nodes to avoid, e.g. 'node[01-03]'")
    group.add_argument("--cpus_per_task", type=int, default=10,
                       help="CPU cores per rank (data-loading workers + 1 is a good value)")
    group.add_argument("--mem_gb", type=float, default=None,
                       help="memory per node in GB (default: the cluster's default; 0 = all memory of the node)")
    group.add_argument("--signal_delay_s", type=int, default=120,
                       help="seconds before the time limit at which the job is told to checkpoint and requeue")
    group.add_argument("--max_num_timeout", type=int, default=30,
                       help="how many times a job may be requeued after hitting its time limit (preemptions do not count)")
    group.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                       help="'local' runs the tasks on this machine with submitit's LocalExecutor (one node)")
    group.add_argument("--dry_run", action="store_true",
                       help="print the job parameters and the resolved main.py arguments, submit nothing")
    return parser


def parse_args(argv=None):
    """Split argv into (launcher options, main.py options); main.parse_args handles --config and errors."""
    import main as training

    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        argparse.ArgumentParser("run_with_submitit.py", description=__doc__.split("\n\n")[0],
                                parents=[training.get_args_parser(), get_launcher_parser()]).print_help()
        sys.exit(0)
    launcher_args, train_argv = get_launcher_parser().parse_known_args(argv)
    train_args = training.parse_args(train_argv)
    if train_args.output_dir:
        train_args.output_dir = os.path.abspath(train_args.output_dir)
    check_args(launcher_args, train_args)
    return launcher_args, train_args


def check_args(launcher_args, train_args):
    """Reject contradictory combinations with a message that names the fix."""
    if launcher_args.nodes < 1:
        raise SystemExit(f"--nodes must be at least 1 (got {launcher_args.nodes})")
    if launcher_args.ngpus < 0:
        raise SystemExit(f"--ngpus must be 0 (CPU ranks) or more (got {launcher_args.ngpus})")
    if launcher_args.ngpus > 0:
        if launcher_args.tasks_per_node not in (None, launcher_args.ngpus):
            raise SystemExit(f"--tasks_per_node {launcher_args.tasks_per_node} with --ngpus {launcher_args.ngpus}: "
                             "GPU jobs run one rank per GPU; drop --tasks_per_node")
        if train_args.device == "cpu":
            raise SystemExit("--device cpu with GPUs requested: use --ngpus 0 for CPU ranks")
    elif train_args.device != "cpu":
        raise SystemExit(f"--ngpus 0 runs CPU ranks but --device is '{train_args.device}': add --device cpu")
    if launcher_args.tasks_per_node is not None and launcher_args.tasks_per_node < 1:
        raise SystemExit(f"--tasks_per_node must be at least 1 (got {launcher_args.tasks_per_node})")
    if not train_args.save_ckpt:
        raise SystemExit("--save_ckpt false: a requeued job would have no checkpoint to resume from and would "
                         "start over; drop --save_ckpt false")
    if launcher_args.cluster == "local" and launcher_args.nodes != 1:
        raise SystemExit("--cluster local runs on this machine only: use --nodes 1")
    if timeout_minutes(launcher_args) < 1:
        raise SystemExit("the time limit must be at least 1 minute (--timeout is in hours, --timeout_min in minutes)")


def tasks_per_node(launcher_args):
    if launcher_args.ngpus > 0:
        return launcher_args.ngpus
    return launcher_args.tasks_per_node or 1


def timeout_minutes(launcher_args):
    if launcher_args.timeout_min is not None:
        return launcher_args.timeout_min
    return int(round(launcher_args.timeout * 60))


def job_dir_template(launcher_args):
    """Absolute job folder; '%j' stays in it and is expanded to the job id by submitit and by each task."""
    job_dir = launcher_args.job_dir or os.path.join("runs", launcher_args.job_name, "%j")
    return os.path.abspath(os.path.expanduser(job_dir))


def pythonpath_with_repo():
    """PYTHONPATH for the job: it must import main.py and utils.py whatever its working directory."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def executor_parameters(launcher_args):
    """Keyword arguments for submitit.AutoExecutor.update_parameters (generic ones, then 'slurm_' ones)."""
    params = {
        "name": launcher_args.job_name,
        "nodes": launcher_args.nodes,
        "tasks_per_node": tasks_per_node(launcher_args),
        "cpus_per_task": launcher_args.cpus_per_task,
        "timeout_min": timeout_minutes(launcher_args),
    }
    if launcher_args.ngpus > 0:
        params["gpus_per_node"] = launcher_args.ngpus
    if launcher_args.mem_gb is not None:
        params["mem_gb"] = launcher_args.mem_gb
    if launcher_args.cluster == "local":
        return params  # the local job inherits PYTHONPATH from submit()

    # Set in the batch script, as some clusters do not pass the submitting environment to jobs.
    params["slurm_setup"] = [f"export PYTHONPATH={shlex.quote(pythonpath_with_repo())}"]
    params["slurm_signal_delay_s"] = launcher_args.signal_delay_s
    constraints = [c for c in (launcher_args.constraint, "volta32gb" if launcher_args.use_volta32 else None) if c]
    if constraints:
        params["slurm_constraint"] = "&".join(f"({c})" if "|" in c else c for c in constraints)
    optional = {"slurm_partition": launcher_args.partition, "slurm_comment": launcher_args.comment,
                "slurm_account": launcher_args.account, "slurm_qos": launcher_args.qos,
                "slurm_exclude": launcher_args.exclude}
    params.update({name: value for name, value in optional.items() if value})
    return params


def expand_job_id(path, job_id):
    return path.replace("%j", str(job_id))


class Trainer:
    """What every task of the job runs: maps submitit's job environment to main.py's ranks and trains.

    Pickled by submitit at submission, and again by `checkpoint()` for each requeue.
    """

    def __init__(self, train_args, job_dir, requeues=0):
        self.train_args = train_args
        self.job_dir = job_dir  # may contain %j
        self.requeues = requeues  # requeues done by this launcher (LocalExecutor has no SLURM_RESTART_COUNT)
        # A fresh rendezvous file per submission: torch's FileStore must not find one left by an earlier run.
        self.rendezvous_id = uuid.uuid4().hex

    def __call__(self):
        # Until main.py is imported, a preemption signal is only noted. It becomes a stop request, which main.py's
        # ranks agree on right after they have joined the process group: every rank stops there (a rank that left
        # on its own would leave the others waiting in init_process_group).
        early_signals = []
        submitit_handler = signal.signal(PREEMPTION_SIGNAL, lambda signum, frame: early_signals.append(signum))
        import main as training
        import utils

        signal.signal(PREEMPTION_SIGNAL, utils.request_stop)
        if early_signals:
            utils.request_stop()
        job_env = submitit.JobEnvironment()
        args = self._task_args(job_env)
        print(f"[run_with_submitit] {job_env}: SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', 0)} "
              f"requeues_by_launcher={self.requeues} pid={os.getpid()} output_dir={args.output_dir} "
              f"resume={args.resume or '(auto)'}", flush=True)
        try:
            return training.main(args)
        except utils.TrainingInterrupted:
            self._hand_over_to_submitit(submitit_handler, job_env.global_rank)

    def _hand_over_to_submitit(self, submitit_handler, global_rank):
        """Requeue through submitit's own handler once training stopped (and rank 0 wrote the step checkpoint)."""
        if not callable(submitit_handler):
            raise RuntimeError("training stopped on a preemption signal outside a submitit job: nothing can "
                               "requeue it; resubmit with the same --output_dir to auto-resume")
        if global_rank == 0:
            print("[run_with_submitit] training stopped for a timeout or preemption; requeuing", flush=True)
        # Rank 0: calls self.checkpoint(), requeues and exits (or raises when out of timeouts).
        # Other ranks: submitit logs and returns; they end here without a result file, so the job is
        # not mistaken for finished.
        submitit_handler(PREEMPTION_SIGNAL, None)
        sys.exit(0)

    def _task_args(self, job_env):
        args = copy.deepcopy(self.train_args)
        job_dir = Path(expand_job_id(self.job_dir, job_env.job_id))
        args.output_dir = expand_job_id(args.output_dir or self.job_dir, job_env.job_id)
        args.rank, args.world_size, args.gpu = job_env.global_rank, job_env.num_tasks, job_env.local_rank
        # SLURM_RESTART_COUNT also changes when the cluster requeues the job without asking us (node failure).
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        args.dist_url = (job_dir / f"rendezvous_{self.rendezvous_id}_{restart}").as_uri()
        # main.py (utils.init_distributed_mode) reads the torchrun-style variables on every cluster type.
        os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(args.world_size), LOCAL_RANK=str(args.gpu))
        if self.requeues > 0 or int(restart) > 0:  # requeued by this launcher, or by SLURM itself (node failure)
            args.auto_resume = True
            newer = checkpoint_written_after(args.resume, args.output_dir) if args.resume else None
            if newer is not None:
                print(f"[run_with_submitit] requeued: {args.output_dir} holds checkpoints newer than --resume "
                      f"{args.resume}; resuming from the newest written, {newer}", flush=True)
                args.resume = newer
        return args

    def checkpoint(self):
        """Called by submitit on global rank 0 after the step checkpoint is written: resubmit to resume (the
        requeued tasks replace a stale --resume, see _task_args)."""
        return submitit.helpers.DelayedSubmission(Trainer(self.train_args, self.job_dir, self.requeues + 1))


def checkpoint_written_after(resume, output_dir):
    """The periodic checkpoint of output_dir written last, if it was written after the --resume file (any, for a URL),
    else None: a requeued job continues from its own checkpoints instead of restarting from --resume. '' (auto-resume,
    which also falls back past a damaged file) when that file is also the newest position; the path itself when files
    of later positions, from before the job restarted at an older checkpoint, sort above it. The job's first start
    always takes --resume, which may name an older checkpoint on purpose."""
    from checkpoint import list_periodic_checkpoints

    found = list_periodic_checkpoints(output_dir)
    if not found:
        return None
    last_written = max((path for _, path in found), key=os.path.getmtime)
    if os.path.isfile(resume) and os.path.getmtime(last_written) <= os.path.getmtime(resume):
        return None
    return "" if last_written == found[-1][1] else last_written


def describe_job(launcher_args, train_args):
    """Human-readable plan: job parameters, rank layout and batch sizes, resolved main.py arguments."""
    nodes, per_node = launcher_args.nodes, tasks_per_node(launcher_args)
    world_size = nodes * per_node
    total_batch = world_size * train_args.batch_size * train_args.update_freq
    rank_kind = "one per GPU" if launcher_args.ngpus > 0 else "CPU ranks, gloo"
    lines = [f"submitit executor: cluster={launcher_args.cluster} job_dir={job_dir_template(launcher_args)}",
             f"  max_num_timeout: {launcher_args.max_num_timeout}"]
    lines += [f"  {name}: {value}" for name, value in sorted(executor_parameters(launcher_args).items())]
    lines += [
        f"ranks: world_size {world_size} = {nodes} nodes x {per_node} tasks per node ({rank_kind}), "
        f"device {train_args.device}",
        f"batch: per-rank {train_args.batch_size} x update_freq {train_args.update_freq} x world_size {world_size} "
        f"= total batch {total_batch}",
        "main.py arguments (output_dir and dist_url are set per task, %j = job id):",
    ]
    resolved = vars(copy.deepcopy(train_args))
    resolved.update(world_size=world_size, output_dir=train_args.output_dir or job_dir_template(launcher_args),
                    dist_url=f"file://{job_dir_template(launcher_args)}/rendezvous_<uuid>_<restart>")
    lines += [f"  --{name} {value}" for name, value in sorted(resolved.items())]
    return "\n".join(lines)


def submit(launcher_args, train_args):
    job_dir = job_dir_template(launcher_args)
    executor = submitit.AutoExecutor(folder=job_dir, cluster=launcher_args.cluster,
                                     slurm_max_num_timeout=launcher_args.max_num_timeout,
                                     local_max_num_timeout=launcher_args.max_num_timeout)
    executor.update_parameters(**executor_parameters(launcher_args))
    with submitit.helpers.environment_variables(PYTHONPATH=pythonpath_with_repo()):
        job = executor.submit(Trainer(train_args, job_dir))
    print(f"Submitted job {job.job_id}; logs, rendezvous file and checkpoints in "
          f"{expand_job_id(train_args.output_dir or job_dir, job.job_id)}")
    return job


def main(argv=None):
    launcher_args, train_args = parse_args(argv)
    if launcher_args.dry_run:
        print(describe_job(launcher_args, train_args))
        return None
    return submit(launcher_args, train_args)


if __name__ == "__main__":
    main()
