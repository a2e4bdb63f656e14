"""The benchmark scripts this repository documents still run (tiny sizes; their timings are not checked)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_ab_unireplknet_compares_with_a_git_revision():
    out = run_script('benchmarks/ab_unireplknet.py', '--before', 'HEAD', '--mode', 'deploy', '--baseline', '',
                     '--batch', '1', '--img_size', '32', '--repeats', '1', '--warmup', '0', '--threads', '1')
    assert '| before (HEAD) |' in out and '| working tree |' in out


def test_ab_unireplknet_names_a_bad_revision():
    result = subprocess.run([sys.executable, 'benchmarks/ab_unireplknet.py', '--before', 'no-such-revision'],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'no-such-revision' in result.stderr


def test_micro_dwconv_times_the_shipped_depthwise_conv():
    out = run_script('benchmarks/micro_dwconv.py', '--batch', '1', '--repeats', '1', '--warmup', '0', '--threads', '1',
                     '--only', 'dwconv 13x13')
    assert 'same_depthwise_conv' in out


def test_gpu_check_runs_its_checks_on_cpu_and_catches_a_wrong_path(capsys, monkeypatch):
    """benchmarks/gpu_check.py has not run on a GPU yet: its checks and timings run here on a tiny CPU model."""
    sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
    import gpu_check
    import unireplknet_cpu
    tiny_run = ['--device', 'cpu', '--tiny', '--batch', '2', '--img_size', '32', '--check_batch', '2',
                '--check_img_size', '64', '--repeats', '1', '--warmup', '0']
    gpu_check.main(tiny_run)
    out = capsys.readouterr().out
    assert out.count('| ok |') == len(gpu_check.CONFIGS) and 'AMP bfloat16, channels_last' in out
    assert '| release computation (plain, float32, NCHW) |' in out
    # A fast path that computes something else is caught (here the GRN fold skipping GRN).
    monkeypatch.setattr(unireplknet_cpu, 'grn_then_linear', lambda grn, linear, x: linear(x))
    with pytest.raises(SystemExit, match='differ from the plain computation'):
        gpu_check.main(tiny_run)


def test_training_step_benchmarks_run_on_cpu():
    """benchmarks/gpu_step_check.py (TF32, AMP, host waits per step; its GPU parts are skipped on CPU) and the
    engine A/B benchmarks/bench_step.py against HEAD."""
    out = run_script('benchmarks/gpu_step_check.py', '--device', 'cpu', '--tiny', '--batch', '2', '--img_size', '32',
                     '--updates', '2', '--repeats', '1', '--warmup', '0')
    assert '| AMP bfloat16 (--use_amp true --amp_dtype bfloat16) |' in out
    out = run_script('benchmarks/bench_step.py', '--before', 'HEAD', '--batch_size', '2', '--updates', '2',
                     '--repeats', '1', '--warmup', '0')
    assert '| engine.py at HEAD |' in out and '| working tree |' in out
