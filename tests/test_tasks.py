"""tasks.py: what classification and forecasting decide (loss, metrics, best checkpoint), and the main.py/engine
pieces that ask them (step schedule, early stopping, training without a class accuracy)."""
import json
import math

import numpy as np
import pytest
import torch

import main
import specs
import tasks
from engine import Precision, train_one_epoch
from optim_factory import step_scheduler

pytestmark = pytest.mark.usefixtures('single_thread')

HOURS, STATIONS = 6, 4


class ShiftedLastValue(torch.nn.Module):
    """A 'forecaster' whose output is known in closed form: the last input value plus a learnable offset."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, samples):
        return samples[:, -1:, :].expand(-1, HOURS, -1) + self.offset


def forecasting_data(count=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(count, 8, STATIONS, generator=generator, dtype=torch.float64) * 3
    targets = torch.randn(count, HOURS, STATIONS, generator=generator, dtype=torch.float64) * 3
    return samples, targets


def persistence(samples):
    return {'persistence': samples[:, -1:, :].expand(-1, HOURS, -1)}


def evaluate_forecasts(task, samples, targets, batch_size):
    dataset = torch.utils.data.TensorDataset(samples.float(), targets.float())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return task.evaluate(loader, ShiftedLastValue(), torch.device('cpu'), Precision('cpu', False))


def test_forecasting_metrics_equal_a_float64_reference_in_both_units():
    samples, targets = forecasting_data()
    task = tasks.ForecastingTask(persistence, units_per_physical=10.0)
    stats = evaluate_forecasts(task, samples, targets, batch_size=4)
    last = samples.float().double()[:, -1:, :]
    model_error = last + 0.5 - targets.float().double()
    persistence_error = last - targets.float().double()
    assert stats['num_values'] == targets.numel()
    assert stats['mse'] == pytest.approx(model_error.square().mean().item(), rel=1e-6)
    assert stats['mae'] == pytest.approx(model_error.abs().mean().item(), rel=1e-6)
    assert stats['persistence_mse'] == pytest.approx(persistence_error.square().mean().item(), rel=1e-6)
    assert stats['persistence_mae'] == pytest.approx(persistence_error.abs().mean().item(), rel=1e-6)
    assert stats['mse_physical'] == pytest.approx(stats['mse'] / 100)
    assert stats['mae_physical'] == pytest.approx(stats['mae'] / 10)
    assert stats['loss'] == stats['mse']


def test_forecasting_metrics_do_not_depend_on_how_the_windows_are_batched():
    """Sums and counts, not means of batch means: a last batch of 1 window weighs as much as one window."""
    samples, targets = forecasting_data()
    task = tasks.ForecastingTask(persistence)
    by_five = evaluate_forecasts(task, samples, targets, batch_size=5)
    whole = evaluate_forecasts(task, samples, targets, batch_size=len(samples))
    for key in ('mse', 'mae', 'persistence_mse', 'persistence_mae'):
        assert by_five[key] == pytest.approx(whole[key], rel=1e-9)


def test_best_means_highest_accuracy_or_lowest_mse():
    classification = tasks.ClassificationTask(main.build_criterion)
    forecasting = tasks.ForecastingTask(persistence)
    assert classification.score({'acc1': 80.0}) > classification.score({'acc1': 70.0}) > classification.initial_best - 1
    assert forecasting.score({'mse': 1.0}) > forecasting.score({'mse': 2.0}) > forecasting.initial_best
    assert forecasting.best_summary('model', forecasting.score({'mse': 1.5})) == 'Lowest MSE of the model: 1.5000'


def test_each_task_chooses_its_loss():
    args = main.parse_args(['--smoothing', '0.1'])
    assert isinstance(tasks.ForecastingTask(persistence).criterion(args, None), torch.nn.MSELoss)
    classification = tasks.ClassificationTask(main.build_criterion)
    assert type(classification.criterion(args, None)).__name__ == 'LabelSmoothingCrossEntropy'


def test_image_data_sets_are_classification_with_mixup_and_forecasting_is_neither():
    assert specs.get('DIGITS').build_task is None and specs.get('DIGITS').mixup
    assert specs.get('GLOBAL_TEMP').build_task is not None and not specs.get('GLOBAL_TEMP').mixup


def test_training_a_regression_model_records_no_class_accuracy():
    samples, targets = forecasting_data(count=8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(samples.float(), targets.float()),
                                         batch_size=4)
    model = ShiftedLastValue()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, torch.nn.MSELoss(), loader, optimizer, Precision('cpu', False),
                            torch.device('cpu'), 0, steps_per_epoch=2, lr_schedule=[0.1, 0.1],
                            track_accuracy=False)
    assert 'class_acc' not in stats and math.isfinite(stats['loss'])


def test_step_schedule_halves_the_rate_every_epoch():
    schedule = step_scheduler(1e-4, 0.5, epochs=3, niter_per_ep=2)
    np.testing.assert_allclose(schedule, [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5])


@pytest.mark.parametrize('scores, patience, stop', [
    ([], 3, False),
    ([-5.0, -4.0, -4.5, -4.2], 3, False),       # 2 epochs since the best
    ([-5.0, -4.0, -4.5, -4.2, -4.0], 3, True),  # equal is not better
    ([-5.0, -6.0, -7.0, -8.0], 0, False),       # 0: off
])
def test_early_stopping_counts_evaluations_since_the_first_best(scores, patience, stop):
    assert main.should_stop_early(scores, patience) == stop


def test_a_resumed_run_recovers_its_scores_from_log_txt(tmp_path):
    log_path = tmp_path / 'log.txt'
    lines = [{'epoch': 0, 'train_loss': 3.0, 'test_loss': 2.0, 'test_mse': 2.0},
             {'epoch': 1, 'train_loss': 2.0, 'test_loss': 1.5, 'test_mse': 1.5, 'test_mse_ema': 9.0}]
    log_path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    assert main.logged_scores(tasks.ForecastingTask(persistence), str(log_path)) == [-2.0, -1.5]
    assert main.logged_scores(tasks.ForecastingTask(persistence), str(tmp_path / 'none.txt')) == []
