"""The benchmark scripts this repository documents still run (tiny sizes; their timings are not checked)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args, timeout=300):
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
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


def test_micro_dwconv_times_the_dilated_branch_paths():
    out = run_script('benchmarks/micro_dwconv.py', '--batch', '1', '--repeats', '1', '--warmup', '0', '--threads', '1',
                     '--only', 'branch k3 r5')
    assert 'padded first channels_last' in out and 'same_depthwise_conv channels_last' in out


def test_micro_dwconv_times_the_weight_gradients_three_ways():
    out = run_script('benchmarks/micro_dwconv.py', '--batch', '1', '--repeats', '1', '--warmup', '0', '--threads', '1',
                     '--only', 'weight grad k7 r2')
    rows = [line for line in out.splitlines() if line.startswith('| weight grad k7 r2 |')]
    assert len(rows) == 9, out  # stages 1-3, three implementations each (CI builds the compiled kernel)
    assert all(row.rstrip().endswith('| - |') for row in rows) and 'compiled kernel' in out


def test_bench_models_times_each_mode_and_writes_its_block(tmp_path):
    report = tmp_path / 'report.md'
    report.write_text('# Kept\n')
    out = run_script('benchmarks/bench_models.py', '--model', 'unireplknet_a', '--compare', 'convnext_atto',
                     '--compare_channels_last', '--batch', '2', '--img_size', '32', '--repeats', '1', '--warmup', '0',
                     '--threads', '1', '--out', str(report))
    assert '| convnext_atto (channels_last) |' in out and 'unireplknet_a / convnext_atto: training step' in out
    text = report.read_text()
    assert text.startswith('# Kept\n') and '<!-- bench_models: speed unireplknet_a batch 2 @32 -->' in text


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
    monkeypatch.setattr(unireplknet_cpu, 'grn_then_linear', lambda grn, linear, x, **options: linear(x))
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


def test_gpu_check_runs_train_every_configuration_on_cpu_with_gloo():
    """benchmarks/gpu_check_runs.py (the end-to-end half of gpu_check.sh) on a tiny model, CPU and gloo: every run
    passes, the kill-and-resume line included (bitwise-equal weights)."""
    out = run_script('benchmarks/gpu_check_runs.py', '--device', 'cpu', '--tiny', '--workers', '0', '--timeout', '280',
                     timeout=2400)
    lines = [line for line in out.splitlines() if line.startswith('| ') and 'samples/s' not in line]
    assert len(lines) == 7 and all('| pass |' in line for line in lines), out
    assert 'kill and resume (SIGKILL in epoch 2, --deterministic) | pass' in out and 'point clouds' in out


def test_gpu_check_runs_fail_loudly_on_a_wrong_result():
    """A run whose loss is not finite (--lr nan) is a FAIL line and the script exits non-zero naming it."""
    result = subprocess.run([sys.executable, 'benchmarks/gpu_check_runs.py', '--device', 'cpu', '--tiny', '--workers',
                             '0', '--only', 'bfloat16', '--main_args', '--lr', 'nan'], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode != 0 and '1 of 1 runs failed: images, AMP bfloat16' in result.stderr, result.stderr[-3000:]
    assert '| FAIL: exit code' in result.stdout


def test_profile_step_splits_a_training_step_into_op_families():
    out = run_script('benchmarks/profile_step.py', '--batch', '2', '--img_size', '64', '--threads', '1', '--warmup',
                     '0')
    rows = {line.split('|')[1].strip(): line.split('|')[2:4] for line in out.splitlines() if line.startswith('| ')}
    ours, atto = (float(cell.split(' ms')[0]) for cell in rows['depthwise conv'])
    assert ours > 0 and atto > 0                      # both models' depthwise convs found
    assert float(rows['GRN'][0].split(' ms')[0]) > 0 and rows['GRN'][1].strip().startswith('0 ms')   # GRN: ours only
    # The unprofiled wall-clock split per part, for each model: its parts and the rest add up to the step.
    tables = out.split('wall clock per part')[1:]
    assert len(tables) == 2 and all('| stages.3 |' in table and '| step (wall clock) |' in table for table in tables)
    assert '| downsample_layers.1 |' in tables[0] and '| stem |' in tables[1]


def test_bench_point_cloud_times_loader_sampling_and_step():
    """benchmarks/bench_point_cloud.py (gpu_check.sh runs it on CUDA) at tiny sizes: every row is there."""
    out = run_script('benchmarks/bench_point_cloud.py', '--points', '400', '--pc_fps_points', '160', '--pc_points',
                     '128', '--input_size', '32', '--fps_batch', '4', '--step_batch', '2', '--loader_batch', '4',
                     '--batches', '1', '--workers', '0', '--repeats', '1')
    for row in ('training loader, 0 workers', 'step FPS, torch loop, batch 4', 'step FPS, fpsample (compiled)',
                'training step: backbone alone (8 images)', 'training step: multi-view fusion alone'):
        assert f'| {row}' in out, out


def test_gpu_check_fits_one_device_lease():
    """gpu_check.sh is one call on a lent GPU (15 minutes per task, start-up included): its parts' timeouts, which
    bound every part, add up to at most 9 minutes."""
    import re
    with open(os.path.join(REPO_ROOT, 'benchmarks', 'gpu_check.sh')) as f:
        limits = [int(seconds) for seconds in re.findall(r'^timeout (\d+) ', f.read(), flags=re.M)]
    assert len(limits) >= 5 and sum(limits) <= 9 * 60, limits
