"""GLOBAL_TEMP / GLOBAL_WIND (modalities/time_series.py) on real hourly weather that the pvlib wheel ships
(tests/weather_data.py), written in Corrformer's .npy layout."""
import argparse
import copy
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from timm.utils import reparameterize_model

import datasets
import engine
import main as train_main
import unireplknet
from modalities import time_series
from modalities.time_series import INPUT_HOURS, PREDICT_HOURS, WINDOW_HOURS
from train_helpers import (BATCH_INDEPENDENT_UNIREPLKNET, REPO_ROOT, TINY_UNIREPLKNET, CreatesFileWhenUnpickled,
                           assert_layer_decay_and_sync_bn_reach_the_backbone_inside, assert_same_training_state,
                           assert_succeeded, load_checkpoint, randomise_batch_norms, read_log, run_killed_after_each,
                           run_main, run_plain_command)
from weather_data import QUICKSTART_SPLIT_HOURS, read_stations, write_corrformer_layout, write_quickstart_folder

pytestmark = pytest.mark.usefixtures('single_thread')

SPLIT_HOURS = QUICKSTART_SPLIT_HOURS
SHORT_SPLIT_HOURS = {'train': (0, 744), 'val': (744, 912), 'test': (912, 1080)}
TINY_D_MODEL = 12  # 48 hours x 12 = a 24 x 24 map
QUICKSTART = os.path.join(REPO_ROOT, 'configs', 'time_series', 'quickstart_global_temp.yaml')
RECIPE = os.path.join(REPO_ROOT, 'configs', 'time_series', 'unireplknet_s_global_temp.yaml')


@pytest.fixture(scope='module')
def weather():
    return read_stations()


@pytest.fixture(scope='module')
def weather_folder(tmp_path_factory):
    """Temperature and wind of the 3 stations in one folder, as GLOBAL_TEMP and GLOBAL_WIND read them."""
    return write_quickstart_folder(str(tmp_path_factory.mktemp('corrformer')))


@pytest.fixture(scope='module')
def short_weather_folder(weather, tmp_path_factory):
    """A month of training windows: for the runs that test resuming and distributed evaluation, not accuracy."""
    temperature, wind, times, stations = weather
    folder = str(tmp_path_factory.mktemp('corrformer_short'))
    write_corrformer_layout(folder, 'wind', wind, times, stations, SHORT_SPLIT_HOURS)
    return folder


def series_args(folder, **overrides):
    args = argparse.Namespace(data_path=folder, data_set='GLOBAL_TEMP', series_eval_split='val',
                              series_units_per_physical=10.0, series_d_model=TINY_D_MODEL,
                              series_stations_per_node=2, series_head='correlation', series_heads=2,
                              series_node_tree=None, series_affine='shared', series_season_hours=24)
    vars(args).update(overrides)
    return args


def tiny_forecaster(folder, backbone_overrides=None, **overrides):
    args = series_args(folder, **overrides)
    backbone = unireplknet.UniRepLKNet(**time_series.backbone_kwargs(args), depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                       kernel_sizes=((3,), (7,), (7,), (3,)), **(backbone_overrides or {}))
    return time_series.build_model(args, backbone)


# ---------------------------------------------------------------- reading the layout

def test_windows_pack_the_known_hours_and_target_the_next_ones(weather, weather_folder):
    temperature, _, _, _ = weather
    windows, nb_classes = time_series.build_dataset(True, series_args(weather_folder))
    assert nb_classes == 0 and len(windows) == 2160 - WINDOW_HOURS + 1
    index = 100
    sample, target = windows[index]
    values, features = time_series.unpack_window(sample[None])
    assert torch.equal(values[0], torch.from_numpy(temperature[index:index + INPUT_HOURS]))
    assert torch.equal(target, torch.from_numpy(temperature[index + INPUT_HOURS:index + WINDOW_HOURS]))
    assert not sample[INPUT_HOURS:, :3].any()  # the hours to predict are not in the input
    assert features.shape == (1, WINDOW_HOURS, 4) and features.abs().max() <= 0.5


def test_time_features_follow_the_timestamps(weather_folder):
    features = time_series.time_features(os.path.join(weather_folder, 'data_time_train.npy'), 2160)
    # The first hour is 2001-01-01 01:00, a Monday.
    np.testing.assert_allclose(features[0], [1 / 23 - 0.5, -0.5, -0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(features[22, 0], 0.5, atol=1e-6)  # 23:00
    np.testing.assert_allclose(features[23], [-0.5, 1 / 6 - 0.5, 1 / 30 - 0.5, 1 / 365 - 0.5], atol=1e-6)  # Tuesday


def test_missing_files_are_all_named(weather_folder, tmp_path):
    folder = tmp_path / 'partial'
    folder.mkdir()
    for name in os.listdir(weather_folder):
        if not name.startswith('data_time_') and name != 'temp_global_hourly_val.npy':
            os.symlink(os.path.join(weather_folder, name), folder / name)
    with pytest.raises(FileNotFoundError, match=r'missing data_time_train\.npy, temp_global_hourly_val\.npy, '
                                                r'data_time_val\.npy, data_time_test\.npy \(expected'):
        time_series.build_dataset(True, series_args(str(folder)))


def test_non_finite_values_are_named_or_their_windows_skipped_and_counted(weather, tmp_path):
    temperature, _, times, stations = weather
    broken = temperature.copy()
    broken[30, 2] = np.nan
    broken[100, 1] = np.inf
    folder = write_corrformer_layout(str(tmp_path), 'temp', broken, times, stations, SPLIT_HOURS)
    with pytest.raises(ValueError, match=r'temp_global_hourly_train\.npy: 2 non-finite value\(s\) \(NaN or inf\), '
                                         r'first at hour 30 station 2, hour 100 station 1.*--skip_corrupt true'):
        time_series.build_dataset(True, series_args(folder))
    windows, _ = time_series.build_dataset(True, series_args(folder, skip_corrupt_images=True))
    readable = [index for index in range(len(windows)) if windows[index] is not None]
    assert readable == list(range(101, len(windows)))   # windows 0..100 hold hour 30 or hour 100
    assert windows.skipped_count == 101
    with pytest.raises(datasets.UnreadableSampleError, match=r'temp_global_hourly_train\.npy: window 50 \(hours '
                                                             r'50\.\.121\) holds 1 non-finite value\(s\), first at '
                                                             r'hour 100 station 1'):
        windows.read(50)
    station_means = time_series.training_mean(series_args(folder, skip_corrupt_images=True))
    expected = [np.delete(broken[:2160, station], hour).mean() for station, hour in ((1, 100), (2, 30))]
    assert station_means[1:].tolist() == pytest.approx(expected, rel=1e-6)


def test_timestamp_files_are_read_without_running_their_code(weather, tmp_path):
    """data_time_*.npy hold a pickled object array; one whose pickle calls a function is refused, naming the file."""
    temperature, _, times, stations = weather
    marker = tmp_path / 'code_ran'
    hostile = np.array([CreatesFileWhenUnpickled(str(marker))] * len(times), dtype=object)
    np.save(tmp_path / 'probe.npy', hostile, allow_pickle=True)
    np.load(tmp_path / 'probe.npy', allow_pickle=True)   # an unrestricted reader runs it: the file is really hostile
    assert marker.exists()
    marker.unlink()

    folder = write_corrformer_layout(str(tmp_path / 'data'), 'temp', temperature, hostile, stations, SPLIT_HOURS)
    with pytest.raises(datasets.UnsafeDataFileError, match=r'data_time_train\.npy refers to the Python object '
                                                           r'(io|builtins)\.open.*refused'):
        time_series.build_dataset(True, series_args(folder))
    assert not marker.exists()
    # What the files may hold is still read: datetime objects (the fixture), pandas Timestamps and strings.
    features = []
    for stamps in (times, np.array([pd.Timestamp(t) for t in times], dtype=object), times.astype(str)):
        folder = write_corrformer_layout(str(tmp_path / 'ok'), 'temp', temperature, stamps.astype(object), stations,
                                         SPLIT_HOURS)
        features.append(time_series.time_features(os.path.join(folder, 'data_time_train.npy'), 2160))
    assert np.array_equal(features[0], features[1]) and np.array_equal(features[0], features[2])


def test_a_split_shorter_than_one_window_is_an_error(weather, tmp_path):
    temperature, _, times, stations = weather
    folder = write_corrformer_layout(str(tmp_path), 'temp', temperature, times, stations,
                                     {'train': (0, 2160), 'val': (2160, 2160 + WINDOW_HOURS - 1), 'test': (0, 100)})
    with pytest.raises(ValueError, match=r'has 71 hours, fewer than one window of 48 input \+ 24 predicted'):
        time_series.build_dataset(False, series_args(folder))


def test_series_and_stations_must_agree(weather, tmp_path):
    temperature, _, times, stations = weather
    folder = write_corrformer_layout(str(tmp_path), 'temp', temperature, times, stations[:2], SPLIT_HOURS)
    with pytest.raises(ValueError, match=r'expected shape \(hours, 2 stations, 1\)'):
        time_series.build_dataset(True, series_args(folder))


# ---------------------------------------------------------------- model

@pytest.mark.parametrize('head', ['correlation', 'pooled'])
def test_forecaster_takes_any_batch_size_and_pads_the_last_node(weather_folder, head):
    """3 stations in nodes of 2: the last node is zero-padded; a batch forecasts each window as alone."""
    model = tiny_forecaster(weather_folder, series_head=head).eval()
    assert (model.num_nodes, model.node_size) == (2, 2)
    windows, _ = time_series.build_dataset(False, series_args(weather_folder))
    samples = torch.stack([windows[index][0] for index in range(5)])
    with torch.no_grad():
        batch = model(samples)
        alone = torch.cat([model(samples[index:index + 1]) for index in range(5)])
    assert batch.shape == (5, PREDICT_HOURS, 3)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-4)


def test_shared_affine_is_the_releases_per_position_affine_repeated_over_nodes(weather_folder):
    """Corrformer.py: affine_weight/bias of shape (1, 1, stations per node), `.repeat(1, 1, node_num)`; here 3
    stations in nodes of 2 (the last node padded). The same numbers as per-station parameters forecast the same."""
    torch.manual_seed(0)
    shared = tiny_forecaster(weather_folder)
    torch.manual_seed(0)
    per_station = tiny_forecaster(weather_folder, series_affine='station')
    assert shared.affine_weight.shape == (2,) and per_station.affine_weight.shape == (3,)
    with torch.no_grad():
        shared.affine_weight.copy_(torch.tensor([0.5, 2.0]))
        shared.affine_bias.copy_(torch.tensor([0.1, -0.3]))
        per_station.affine_weight.copy_(torch.tensor([0.5, 2.0, 0.5]))  # station s takes position s mod 2
        per_station.affine_bias.copy_(torch.tensor([0.1, -0.3, 0.1]))
    windows, _ = time_series.build_dataset(False, series_args(weather_folder))
    samples = torch.stack([windows[index][0] for index in range(3)])
    shared.eval(), per_station.eval()
    with torch.no_grad():
        torch.testing.assert_close(shared(samples), per_station(samples), rtol=0, atol=0)


def test_forecaster_trains_under_bfloat16_autocast(weather_folder):
    """--use_amp --amp_dtype bfloat16: the decoder's FFTs run in float32 inside autocast."""
    model = tiny_forecaster(weather_folder, series_stations_per_node=1)
    windows, _ = time_series.build_dataset(True, series_args(weather_folder))
    samples, targets = (torch.stack(items) for items in zip(*[windows[index] for index in range(4)]))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = torch.nn.functional.mse_loss(model(samples).float(), targets)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('head', ['correlation', 'pooled'])
def test_reparameterised_backbone_inside_the_adapter_forecasts_the_same(weather_folder, head):
    # Layer scale 1 (1e-6 would hide a wrong block kernel); the reference adds up the branches (the fast path's eval
    # form runs get_kernel_bias(), as reparameterisation does).
    model = tiny_forecaster(weather_folder, dict(layer_scale_init_value=1.0, fast_cpu_kernels=False), series_head=head)
    randomise_batch_norms(model).eval()
    windows, _ = time_series.build_dataset(False, series_args(weather_folder))
    samples = torch.stack([windows[index][0] for index in range(4)]).double()
    deployed = reparameterize_model(copy.deepcopy(model).double())  # folded in float64, as the reference runs
    with torch.no_grad():
        torch.testing.assert_close(deployed(samples), model.double()(samples), rtol=1e-9, atol=1e-8)
    assert any(getattr(block, 'deploy', False) for block in deployed.backbone.blocks())


def test_auto_correlation_equals_a_brute_force_time_delay_aggregation():
    """Float64: lags from the circular cross-correlation sum_t q[t + lag] . k[t] averaged over a head's channels, the
    top int(log L) lags per head, their softmax weights, and the values rolled by each lag."""
    torch.manual_seed(0)
    layer = time_series.AutoCorrelation(d_model=6, heads=2).double()
    queries, memory = torch.randn(2, 10, 6, dtype=torch.float64), torch.randn(2, 7, 6, dtype=torch.float64)
    output = layer(queries, memory, memory)
    length, top_k = 10, int(np.log(10))
    q = layer.projections.query(queries).view(2, length, 2, 3)
    zeros = memory.new_zeros(2, 3, 6)  # keys and values shorter than the queries are zero-padded after projection
    k = torch.cat([layer.projections.key(memory), zeros], dim=1).view(2, length, 2, 3)
    v = torch.cat([layer.projections.value(memory), zeros], dim=1).view(2, length, 2, 3)
    expected = torch.zeros_like(v)
    for b in range(2):
        for h in range(2):
            scores = torch.stack([sum((q[b, (t + lag) % length, h] * k[b, t, h]).mean() for t in range(length))
                                  for lag in range(length)])
            weights, lags = scores.topk(top_k)
            for weight, lag in zip(weights.softmax(0), lags):
                expected[b, :, h] += weight * v[b, (torch.arange(length) + lag) % length, h]
    torch.testing.assert_close(output, layer.projections.out(expected.reshape(2, length, 6)))


def test_cross_node_correlation_equals_a_brute_force_reference():
    """Float64, 2 groups of 4 sibling nodes: pivot lags, alignment, sigmoid weights, order by lag (largest first),
    the causal node convolution, then back in order and shifted back, computed node by node."""
    torch.manual_seed(0)
    nodes, length = 4, time_series.LABEL_HOURS + PREDICT_HOURS  # the decoder's hours
    layer = time_series.CrossNodeCorrelation(d_model=4, heads=2).double().eval()
    queries, memory = torch.randn(2 * nodes, length, 4, dtype=torch.float64), torch.randn(2 * nodes, 9, 4,
                                                                                          dtype=torch.float64)
    output = layer(queries, memory, memory, nodes=nodes)
    q, k, v = (x.view(2, nodes, length, 2, 2) for x in layer.projections.split(queries, memory, memory))
    expected = torch.zeros_like(v)
    hours = torch.arange(length)
    for group in range(2):
        for head in range(2):
            pivot = q[group, :, :, head].mean(dim=0)
            lags, aligned = [], []
            for node in range(nodes):
                scores = torch.stack([(pivot[(hours + lag) % length] * k[group, node, :, head]).sum(0).mean()
                                      for lag in range(length)])
                lags.append(int(scores.argmax()))
                aligned.append(v[group, node, (hours - lags[-1]) % length, head] * torch.sigmoid(scores.max()))
            order = sorted(range(nodes), key=lambda node: -lags[node])  # largest lag first (ties: node order)
            sequence = torch.stack([aligned[node].T.reshape(-1) for node in order], dim=1)  # (channels x hours, nodes)
            fused = layer.fusion(sequence[None])[0]
            for position, node in enumerate(order):
                back = fused[:, position].reshape(2, length).T
                expected[group, node, :, head] = back[(hours + lags[node]) % length]
    torch.testing.assert_close(output, layer.projections.out(expected.reshape(2 * nodes, length, 4)))


def test_causal_node_convolution_sees_only_earlier_nodes():
    layer = time_series.CausalNodeConvolution(channels=3).double().eval()
    x = torch.randn(1, 3, 6, dtype=torch.float64)
    changed = x.clone()
    changed[..., 3] += 1.0
    difference = (layer(changed) - layer(x)).abs().sum(dim=1)[0]
    assert difference[:3].max() == 0 and difference[3] > 0


def test_multi_correlation_averages_each_tree_level_over_descendants():
    """Tree (2, 3): level 0 correlates the 2 parents (each the mean of its 3 children) and hands each child its
    parent's result; level 1 correlates each parent's 3 children; the leaf auto-correlation is added."""
    torch.manual_seed(0)
    layer = time_series.MultiCorrelation(d_model=4, heads=2, tree=[2, 3]).double().eval()
    x, memory = torch.randn(6, 48, 4, dtype=torch.float64), torch.randn(6, 5, 4, dtype=torch.float64)
    parents = layer.cross_node(x.view(2, 3, 48, 4).mean(1), memory.view(2, 3, 5, 4).mean(1),
                               memory.view(2, 3, 5, 4).mean(1), nodes=2)
    children = layer.cross_node(x, memory, memory, nodes=3)
    expected = layer.leaf(x, memory, memory) + (parents.repeat_interleave(3, dim=0) + children) / 2
    torch.testing.assert_close(layer(x, memory), expected)


def test_node_tree_must_multiply_to_the_nodes(weather_folder):
    with pytest.raises(ValueError, match=r'--series_node_tree 2 2: the sizes must multiply to the 3 nodes'):
        tiny_forecaster(weather_folder, series_stations_per_node=1, series_node_tree=[2, 2])


def test_series_decomposition_trend_is_an_edge_padded_moving_average():
    x = torch.randn(1, 40, 2, dtype=torch.float64)
    seasonal, trend = time_series.decompose(x, kernel_size=5)
    series = x[0].numpy()
    padded = np.concatenate([np.repeat(series[:1], 2, axis=0), series, np.repeat(series[-1:], 2, axis=0)])
    reference = np.stack([np.convolve(padded[:, c], np.ones(5) / 5, mode='valid') for c in range(2)], axis=1)
    np.testing.assert_allclose(trend[0].numpy(), reference, rtol=1e-12)
    torch.testing.assert_close(seasonal + trend, x)


def test_embedding_width_must_make_a_square_map(weather_folder):
    with pytest.raises(ValueError, match=r'--series_d_model 10: 48 x d_model must be a perfect square'):
        tiny_forecaster(weather_folder, series_d_model=10)


def test_baselines_are_the_last_known_hour_and_the_training_mean(weather, weather_folder):
    temperature, _, _, _ = weather
    args = series_args(weather_folder)
    windows, _ = time_series.build_dataset(False, args)
    samples = torch.stack([windows[index][0] for index in range(3)])
    forecasts = time_series.baseline_forecasts(samples, time_series.training_mean(args))
    val_start = SPLIT_HOURS['val'][0]
    for index in range(3):
        last_known = torch.from_numpy(temperature[val_start + index + INPUT_HOURS - 1])
        assert torch.equal(forecasts['persistence'][index], last_known.expand(PREDICT_HOURS, -1))
    np.testing.assert_allclose(forecasts['train_mean'][0, 0].numpy(), temperature[:2160].mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize('period', [24, 7, 1])
def test_seasonal_naive_repeats_the_last_period_of_known_hours(weather, weather_folder, period):
    """Forecast hour h (0-based, the (48 + h)-th hour of the window) is the known hour k periods earlier, k the
    smallest that lands in the 48 input hours; period 1 is persistence."""
    temperature, _, _, _ = weather
    args = series_args(weather_folder)
    windows, _ = time_series.build_dataset(False, args)
    samples = torch.stack([windows[index][0] for index in range(2)])
    forecasts = time_series.baseline_forecasts(samples, time_series.training_mean(args), season_hours=period)
    val_start = SPLIT_HOURS['val'][0]
    for index in range(2):
        for hour in range(PREDICT_HOURS):
            source = INPUT_HOURS + hour
            while source >= INPUT_HOURS:
                source -= period
            expected = torch.from_numpy(temperature[val_start + index + source])
            assert torch.equal(forecasts['seasonal_naive'][index, hour], expected), (index, hour)
    if period == 1:
        assert torch.equal(forecasts['seasonal_naive'], forecasts['persistence'])


def test_season_period_must_fit_the_input_window(weather_folder):
    with pytest.raises(ValueError, match='--series_season_hours 49'):
        time_series.build_task(series_args(weather_folder, series_season_hours=49))


def test_evaluation_says_which_split_it_measured(weather_folder):
    """log.txt's test_* keys of a forecasting run carry test_split; the console line and TensorBoard tags name it."""
    args = series_args(weather_folder, series_eval_split='test', series_season_hours=24)
    task = time_series.build_task(args)
    windows, _ = time_series.build_dataset(False, args)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(windows, range(4)), batch_size=4)
    model = tiny_forecaster(weather_folder).eval()
    stats = task.evaluate(loader, model, torch.device('cpu'), engine.Precision(torch.device('cpu'), False))
    assert stats['split'] == 'test'
    assert 'values of the test split' in task.summary('model', stats)
    assert 'seasonal_naive MSE' in task.summary('model', stats)
    assert set(task.tensorboard_values(stats)) == {
        f'{name}_{metric}_test'.lstrip('_') for name in ('', 'persistence', 'seasonal_naive', 'train_mean')
        for metric in ('mse', 'mae')}


# ---------------------------------------------------------------- through main.py

def main_args(folder, data_set='GLOBAL_TEMP'):
    """The recipe (Adam, MSE, lr halved every epoch, early stopping) at toy size."""
    return ['--data_set', data_set, '--data_path', folder, '--model', 'unireplknet_a',
            '--model_overrides', TINY_UNIREPLKNET, '--series_d_model', str(TINY_D_MODEL),
            '--series_stations_per_node', '3', '--series_heads', '4', '--opt', 'adam', '--lr', '1e-3',
            '--weight_decay', '0', '--lr_schedule', 'step', '--early_stop_patience', '3', '--batch_size', '32',
            '--device', 'cpu', '--num_workers', '0', '--seed', '0']


def test_layer_decay_and_sync_bn_reach_the_backbone_inside_the_forecaster(weather_folder):
    assert_layer_decay_and_sync_bn_reach_the_backbone_inside([*main_args(weather_folder), '--nb_classes', '0'])


def test_finetune_loads_an_image_checkpoint_into_the_backbone(weather_folder, tmp_path):
    """--finetune with a plain UniRepLKNet checkpoint (keys without the adapter's `backbone.` prefix)."""
    args = train_main.parse_args([*main_args(weather_folder), '--nb_classes', '0'])
    pretrained = train_main.build_model(args).backbone
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.uniform_()
    torch.save({'model': pretrained.state_dict()}, tmp_path / 'image.pth')
    args.finetune = str(tmp_path / 'image.pth')
    model = train_main.build_model(args)
    train_main.load_finetune_weights(args, model)
    for name, value in pretrained.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name


def test_throughput_times_the_forecaster_on_real_windows(weather_folder, capsys):
    """--throughput on a data set with its own input: the batch repeats a real window (random images would not fit)."""
    args = train_main.parse_args([*main_args(weather_folder), '--throughput', '--batch_size', '2'])
    assert train_main.main(args) > 0
    windows, _ = time_series.build_dataset(False, series_args(weather_folder))
    assert f'input {tuple(windows[0][0].shape)}' in capsys.readouterr().out


@pytest.mark.slow
def test_trained_model_beats_persistence_and_the_training_mean(weather_folder, tmp_path):
    """Temperature, one epoch of the recipe. (Wind, whose next hours are close to the last one, needs more than a
    toy epoch to beat persistence: BENCHMARKS.md.)"""
    output_dir = str(tmp_path / 'run')
    completed = run_main(['--config', QUICKSTART, '--data_path', weather_folder, '--epochs', '1',
                          '--output_dir', output_dir])
    assert_succeeded(completed)
    assert 'Forecasts of the model: MSE' in completed.stdout and 'baselines: persistence MSE' in completed.stdout
    log = read_log(output_dir)[0]
    assert 'train_class_acc' not in log
    assert log['test_mse'] < log['test_persistence_mse'] and log['test_mse'] < log['test_train_mean_mse']
    assert log['test_split'] == 'val' and 'test_seasonal_naive_mse' in log
    assert log['test_mse_physical'] == pytest.approx(log['test_mse'] / 100)
    assert log['test_mae_physical'] == pytest.approx(log['test_mae'] / 10)
    best = load_checkpoint(os.path.join(output_dir, 'checkpoint-best.pth'))
    assert best['max_accuracy'] == -log['test_mse']


@pytest.mark.slow
def test_skip_corrupt_run_completes_and_logs_the_skipped_windows(weather, tmp_path):
    """An inf in the training series: with --skip_corrupt the windows holding it are skipped, the run completes and
    logs their number (128 training windows, all read in the one epoch: 4 batches of 32)."""
    temperature, _, times, stations = weather
    broken = temperature.copy()
    broken[100, 0] = np.inf
    folder = write_corrformer_layout(str(tmp_path / 'data'), 'temp', broken, times, stations,
                                     {'train': (0, 128 + WINDOW_HOURS - 1), 'val': (199, 367), 'test': (367, 535)})
    output_dir = str(tmp_path / 'run')
    completed = run_main([*main_args(folder), '--epochs', '1', '--skip_corrupt', '--output_dir', output_dir])
    assert_succeeded(completed)
    skipped = re.findall(r'Skipping: .*temp_global_hourly_train\.npy: window (\d+) ', completed.stdout)
    assert sorted(map(int, skipped)) == list(range(100 - WINDOW_HOURS + 1, 101))   # every window holding hour 100
    assert read_log(output_dir)[0]['train_skipped_images'] == WINDOW_HOURS
    assert np.isfinite(read_log(output_dir)[0]['test_mse'])


@pytest.mark.slow
def test_recipe_lr_is_the_releases_epochs_0_and_1_at_the_base_lr_then_halved(short_weather_folder, tmp_path):
    """The recipe's schedule through main.py (toy model and data): the release's adjust_learning_rate(epoch + 1)
    after each epoch keeps 1e-4 for epochs 0 and 1 and halves from epoch 2."""
    output_dir = str(tmp_path / 'run')
    completed = run_main(['--config', RECIPE, *main_args(short_weather_folder, 'GLOBAL_WIND'), '--lr', '1e-4',
                          '--epochs', '3', '--use_checkpoint', 'false', '--series_node_tree', '1',
                          '--output_dir', output_dir])
    assert_succeeded(completed)
    assert [line['train_lr'] for line in read_log(output_dir)] == pytest.approx([1e-4, 1e-4, 5e-5], rel=1e-12)


@pytest.mark.slow
def test_distributed_evaluation_equals_one_process(short_weather_folder):
    """The validation windows split over 2 gloo ranks (unpadded): summed errors give the 1-process MSE/MAE. (The
    untrained model of seed 0: DDP hands rank 0's weights to rank 1.)"""
    argv = [*main_args(short_weather_folder, 'GLOBAL_WIND'), '--eval', 'true']
    results = []
    for nproc in (1, 2):
        completed = run_main(argv, nproc=nproc)
        assert_succeeded(completed)
        results.append(re.search(r'Forecasts of the network: MSE (\S+) MAE (\S+) on (\d+) values .*baselines: '
                                 r'persistence MSE (\S+)', completed.stdout).groups())
    (mse, mae, count, persistence), (mse_2, mae_2, count_2, persistence_2) = results
    assert count == count_2 == str((912 - 744 - WINDOW_HOURS + 1) * PREDICT_HOURS * 3)
    assert float(mse_2) == pytest.approx(float(mse), rel=1e-6)
    assert float(mae_2) == pytest.approx(float(mae), rel=1e-6)
    assert float(persistence_2) == pytest.approx(float(persistence), abs=1e-4)


@pytest.mark.slow
def test_killed_and_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(short_weather_folder, tmp_path):
    """Decoder dropout and drop path (torch RNG), EMA; killed right after epoch 0 and in the middle of epoch 1."""
    argv = [*main_args(short_weather_folder, 'GLOBAL_WIND'), '--epochs', '2', '--drop_path', '0.1',
            '--model_ema', 'true', '--model_ema_eval', 'true', '--save_ckpt_every_steps', '5']
    uninterrupted = str(tmp_path / 'uninterrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))
    interrupted = str(tmp_path / 'interrupted')
    # 21 steps an epoch, one every 5
    run_killed_after_each(argv, interrupted, ['checkpoint-0.pth', 'checkpoint-1-step9.pth'])
    assert_same_training_state(os.path.join(interrupted, 'checkpoint-1.pth'),
                               os.path.join(uninterrupted, 'checkpoint-1.pth'))
    assert [line['test_mse'] for line in read_log(interrupted)] == \
        [line['test_mse'] for line in read_log(uninterrupted)]


@pytest.mark.slow
def test_early_stopping_ends_training_and_a_resumed_run_stays_stopped(short_weather_folder, tmp_path):
    """With lr 0 and no BatchNorm (whose running statistics would still move) every evaluation equals the first, and
    equal is not better: patience 1 stops after epoch 1; a second launch reads the scores back from log.txt and trains
    no further epoch."""
    output_dir = str(tmp_path / 'run')
    argv = [*main_args(short_weather_folder, 'GLOBAL_WIND'), '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET,
            '--series_head', 'pooled', '--lr', '0',
            '--early_stop_patience', '1', '--epochs', '5', '--output_dir', output_dir]
    for _ in range(2):
        completed = run_main(argv)
        assert_succeeded(completed)
        assert 'Early stopping: no better evaluation in the last 1 epochs' in completed.stdout
        assert [line['epoch'] for line in read_log(output_dir)] == [0, 1]


@pytest.mark.slow
def test_plain_command_trains_with_the_forecasting_recipe(weather_folder, tmp_path):
    stdout = run_plain_command('GLOBAL_WIND', weather_folder,
                               ['--series_d_model', str(TINY_D_MODEL), '--series_stations_per_node', '3',
                                '--series_heads', '4', '--batch_size', '32'], str(tmp_path / 'run'))
    assert '"lr_schedule": "step"' in stdout and '"opt": "adam"' in stdout and '"smoothing": 0.0' in stdout
