"""The one place where classification and forecasting differ.

main.py and engine.py run one training loop for every data set and ask the run's task (`build_task(args)`):

- `criterion(args, mixup_fn)`: the training loss (main.build_criterion's cross-entropy, or MSE);
- `tracks_train_accuracy`: whether the training class accuracy applies;
- `evaluate(...)`: the evaluation metrics, from sums all-reduced over ranks (so --dist_eval equals one process);
- `score(stats)` (higher is better) and `initial_best`: what the best checkpoint is (highest top-1 accuracy, or
  lowest MSE);
- `summary(what, stats)`, `best_summary(what, best)`, `tensorboard_values(stats)`: what the console and
  Tensorboard show.
  log.txt records every key of `evaluate`'s stats with main.py's `test_` prefix.

Classification is the default; a data set's spec (specs.py) may name its own task builder, e.g. the time-series
data sets build a `ForecastingTask` with their persistence and training-mean baselines. This module knows no data
set: the modality modules import it, not the other way round.
"""
import math

import torch
import torch.distributed as dist

import metric_logging
import utils
from engine import evaluate as evaluate_classification


class ClassificationTask:
    """main.py's classification loss (cross-entropy with --smoothing, --mixup/--cutmix), top-1/top-5 accuracy
    (engine.evaluate), best = highest top-1."""
    tracks_train_accuracy = True
    initial_best = 0.0

    def __init__(self, build_criterion):
        self.build_criterion = build_criterion

    def criterion(self, args, mixup_fn):
        return self.build_criterion(args, mixup_fn)

    def evaluate(self, data_loader, model, device, precision, distributed=False, channels_last=False):
        return evaluate_classification(data_loader, model, device, precision, distributed=distributed,
                                       channels_last=channels_last)

    def score(self, stats):
        return stats['acc1']

    def summary(self, what, stats):
        return f"Accuracy of the {what} on {stats['num_images']} test images: {stats['acc1']:.5f}%"

    def best_summary(self, what, best):
        return f'Max accuracy of the {what}: {best:.2f}%'

    def tensorboard_values(self, stats):
        return {'acc1': stats['acc1'], 'acc5': stats['acc5'], 'loss': stats['loss']}


class ForecastingTask:
    """MSE loss; MSE/MAE of the model and of baseline forecasts, in the data set's and in physical units;
    best = lowest MSE.

    baselines(samples) -> {name: forecast shaped like the targets} (forecasts that need no training, e.g.
    persistence); each gets `{name}_mse` and `{name}_mae` in the stats. units_per_physical: data-set units per
    physical unit (MSE is divided by its square, MAE by it, for the `_physical` metrics). split: the name of the
    split the evaluation measures ('val', 'test'); it is in the stats (log.txt: `test_split`), the console line and
    the TensorBoard tags, since main.py's `test_` prefix alone would not say which split it was.
    """
    tracks_train_accuracy = False
    initial_best = -math.inf

    def __init__(self, baselines, units_per_physical=1.0, split='val'):
        self.baselines = baselines
        self.units_per_physical = units_per_physical
        self.split = split

    def criterion(self, args, mixup_fn):
        return torch.nn.MSELoss()

    @torch.no_grad()
    def evaluate(self, data_loader, model, device, precision, distributed=False, channels_last=False,
                 print_freq=10):
        """Sums of squared and absolute errors of every forecaster and the number of values, added over ranks."""
        model.eval()
        metric_logger = metric_logging.MetricLogger(delimiter='  ')
        names, totals = None, None
        for samples, targets in metric_logger.log_every(data_loader, print_freq, 'Test:'):
            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True).double()
            with precision.autocast():
                output = model(samples)
            forecasts = {'model': output, **self.baselines(samples)}
            if names is None:
                names = list(forecasts)
                totals = torch.zeros(2 * len(names) + 1, dtype=torch.float64, device=device)
            errors = [forecasts[name].double() - targets for name in names]
            batch_totals = torch.stack([error.square().sum() for error in errors] +
                                       [error.abs().sum() for error in errors] +
                                       [torch.tensor(float(targets.numel()), dtype=torch.float64, device=device)])
            totals += batch_totals
            metric_logger.update(mse=batch_totals[0].item() / targets.numel())
        if distributed and utils.is_dist_avail_and_initialized():
            # A rank without windows (fewer windows than ranks) still enters the all-reduce, with zeros.
            every_rank_names = [None] * dist.get_world_size()
            dist.all_gather_object(every_rank_names, names)
            names = next((rank_names for rank_names in every_rank_names if rank_names is not None), None)
            if names is not None:
                if totals is None:
                    totals = torch.zeros(2 * len(names) + 1, dtype=torch.float64, device=device)
                dist.all_reduce(totals)
        if totals is None:
            raise ValueError('the evaluation set yielded no windows')
        return self.metrics(names, totals.tolist())

    def metrics(self, names, totals):
        """Stats from [squared-error sums..., absolute-error sums..., count] in `names` order."""
        count = totals[-1]
        stats = {}
        for index, name in enumerate(names):
            prefix = '' if name == 'model' else f'{name}_'
            stats[f'{prefix}mse'] = totals[index] / count
            stats[f'{prefix}mae'] = totals[len(names) + index] / count
        stats['loss'] = stats['mse']
        stats['mse_physical'] = stats['mse'] / self.units_per_physical ** 2
        stats['mae_physical'] = stats['mae'] / self.units_per_physical
        stats['num_values'] = int(count)
        stats['split'] = self.split
        return stats

    def score(self, stats):
        return -stats['mse']

    def summary(self, what, stats):
        baselines = '  '.join(f"{name[:-4]} MSE {value:.4f} MAE {stats[name[:-4] + '_mae']:.4f}"
                              for name, value in stats.items() if name.endswith('_mse'))
        return (f"Forecasts of the {what}: MSE {stats['mse']:.6f} MAE {stats['mae']:.6f} on {stats['num_values']} "
                f"values of the {stats['split']} split (physical units: MSE {stats['mse_physical']:.4f} MAE {stats['mae_physical']:.4f}); "
                f"baselines: {baselines}")

    def best_summary(self, what, best):
        return f'Lowest MSE of the {what}: {-best:.4f}'

    def tensorboard_values(self, stats):
        """The model's and every baseline's MSE/MAE, tagged with the split (e.g. perf/test_mse_val)."""
        return {f'{key}_{stats["split"]}': value for key, value in stats.items()
                if key.endswith(('mse', 'mae')) and not key.startswith('num_')}
