"""A real single-node SLURM cluster on localhost, for tests that submit jobs through submitit.

`LocalSlurmCluster(state_dir)` writes a slurm.conf, starts `slurmctld` and `slurmd` in the foreground
(no systemd, no munge: auth/none and cred/none), waits until the node is idle, and on `stop()` cancels the
jobs, then sends SIGTERM to the two daemons it started (by their recorded PIDs, never by name).

Everything (config, state, spool, logs, pid files) lives under `state_dir`; the ports are picked free at
start, so several clusters can coexist on one machine. `env()` returns the environment for client commands
and submitit: SLURM_CONF points at this cluster and tests/slurm/ (a `sacct` stand-in, because there is no
accounting daemon) comes first on PATH.

Settings that matter (the ones SLURM needs to run as one node on localhost):
- `AuthInfo=cred_expire=10` is also the delay before a requeued job may start again (default 120 s).
- `SlurmdParameters=config_overrides` lets the node claim 32 CPUs on a small machine, so a launcher asking
  for several CPUs per task is scheduled instead of pending forever.
- `JobRequeue=1`, `MinJobAge=600` (finished jobs stay visible to `scontrol show job`), `KillWait=5`.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")
STAND_INS_DIR = Path(__file__).resolve().parent / "slurm"


def why_slurm_unavailable():
    """Return a reason why a local SLURM cannot be started here, or None if it can."""
    missing = [name for name in SLURM_BINARIES if shutil.which(name) is None]
    if missing:
        return (f"SLURM binaries not found: {', '.join(missing)} "
                "(install with: apt-get install slurmctld slurmd slurm-client)")
    if os.geteuid() != 0:
        return "a local SLURM with SlurmUser=root needs to run as root"
    return None


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurmCluster:
    """One-node SLURM (controller + compute daemon) on this machine; see the module docstring."""

    def __init__(self, state_dir, cpus=32, memory_mb=16000):
        self.state_dir = Path(state_dir)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.hostname = socket.gethostname().split(".")[0]
        self.conf_path = self.state_dir / "slurm.conf"
        self._daemons = {}  # name -> Popen

    def env(self):
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        env["PATH"] = f"{STAND_INS_DIR}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *command, check=True):
        """Run a SLURM client command against this cluster and return its stdout."""
        result = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _write_config(self):
        d = self.state_dir
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        host = self.hostname
        self.conf_path.write_text("\n".join([
            "ClusterName=pytest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/none",
            "CredType=cred/none",
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=sched_interval=1",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=600",
            "KillWait=5",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "SlurmdParameters=config_overrides",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout_s=30):
        self._write_config()
        env = self.env()
        logs = self.state_dir
        commands = {
            "slurmctld": ["slurmctld", "-D", "-i", "-f", str(self.conf_path)],
            "slurmd": ["slurmd", "-D", "-N", self.hostname, "-f", str(self.conf_path)],
        }
        for name, command in commands.items():
            with open(logs / f"{name}.stdout", "w") as out:
                self._daemons[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for name, proc in self._daemons.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with code {proc.returncode}; see {logs}/{name}.log")
            if self.run("sinfo", "-h", "-o", "%t", check=False).strip() == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SLURM node not idle after {timeout_s}s; see logs in {logs}")

    def job_ids(self):
        return self.run("squeue", "-h", "-o", "%i", check=False).split()

    def stop(self, timeout_s=30):
        """Cancel every job, wait until none runs, then TERM the daemons this object started."""
        if self._daemons.get("slurmctld") and self._daemons["slurmctld"].poll() is None:
            jobs = self.job_ids()
            if jobs:
                self.run("scancel", *jobs, check=False)
            deadline = time.time() + timeout_s
            while self.job_ids() and time.time() < deadline:
                time.sleep(0.5)
        for proc in self._daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._daemons.values():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._daemons.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
