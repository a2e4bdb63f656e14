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
