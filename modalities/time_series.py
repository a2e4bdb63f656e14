"""Global Temp / Global Wind forecasting with UniRepLKNet (paper Table 9), on Corrformer's data layout.

Data (`--data_set GLOBAL_TEMP` or `GLOBAL_WIND`, `--data_path FOLDER`), as Corrformer ships it:

    FOLDER/{temp,wind}_global_hourly_{train,val,test}.npy   (T, stations, 1) hourly values (x10 in the release)
    FOLDER/data_time_{train,val,test}.npy                   (T,) timestamps (an object array: read by a restricted
                                                            unpickler that admits datetime objects, pandas
                                                            Timestamps and strings only, so it runs no code)
    FOLDER/stations_sorted.npy                              (stations, 3): latitude, longitude, elevation

Any number of stations works (the release has 3,850). A sample is a window of INPUT_HOURS known hours; the target is
the next PREDICT_HOURS hours of every station. The DataLoader sees one tensor per sample, Corrformer's decoder input
extended by the time features (see `pack_window`), so the shared engine moves it like an image batch.

Model (`build_model`): stations are grouped into nodes of --series_stations_per_node (the last one zero-padded);
each window is normalised per station (mean/std over its input hours) with a learnable affine (--series_affine: shared
by the nodes, one weight and bias per position in a node, as the release's `Corrformer.py`; or one per station);
Corrformer's embedding
(circular Conv1d over a node's station values + Linear over the 4 time features + Linear over the node's standardised
station coordinates) gives (INPUT_HOURS, d_model) per node, reshaped into one square single-channel map for the
UniRepLKNet backbone (in_chans=1); its stage-4 tokens (through the backbone's final LayerNorm) feed one of two heads
(--series_head): `correlation`, Corrformer's decoder written from the Autoformer/Corrformer papers and the release's
behaviour (series decomposition; multi-correlation = auto-correlation of each node over time + cross-node correlation
among siblings of a node tree; with itself, then with the tokens; trend projection); or `pooled`, the tokens' mean
plus an embedding of each future hour's time features, GELU, Linear. The forecasts are de-normalised with the
window's mean/std. The correlation head's `memory_projection` (Linear from the backbone's stage-4 width to d_model) is
this project's: the release fed its backbone's output to the decoder with a reshape that fails (1000 logits per node).
"""
import math
import os

import numpy as np
import torch
from torch import nn

import datasets
import specs
import tasks

INPUT_HOURS = 48
PREDICT_HOURS = 24
WINDOW_HOURS = INPUT_HOURS + PREDICT_HOURS
TIME_FEATURES = 4  # hour of day, day of week, day of month, day of year (Corrformer/Informer "h" frequency)
SERIES_PREFIXES = {'GLOBAL_TEMP': 'temp', 'GLOBAL_WIND': 'wind'}
SPLITS = ('train', 'val', 'test')
STATION_COLUMNS = ('latitude', 'longitude', 'elevation')
NORMALISATION_EPS = 1e-5
AFFINE_EPS = 1e-10  # added to the affine weight when the forecasts are de-normalised (the release's)
LABEL_HOURS = 24  # known hours the decoder starts from (Corrformer's label_len)
MOVING_AVERAGE_HOURS = 25  # series decomposition window (Corrformer's moving_avg)
DECODER_DROPOUT = 0.05  # Corrformer's default dropout (embeddings and decoder)


def add_arguments(parser):
    """main.py options of the time-series data sets (their own block)."""
    group = parser.add_argument_group('time-series forecasting (--data_set GLOBAL_TEMP / GLOBAL_WIND)')
    group.add_argument('--series_eval_split', default='val', choices=['val', 'test'],
                       help='split evaluated after each epoch and by --eval (best checkpoint: lowest MSE on it)')
    group.add_argument('--series_season_hours', default=24, type=int, metavar='HOURS',
                       help='period of the seasonal-naive baseline (the forecast repeats the last HOURS known hours; '
                            f'24: the daily cycle of hourly data; 1 to {INPUT_HOURS})')
    group.add_argument('--series_units_per_physical', default=10.0, type=float,
                       help='data-set units per physical unit (Corrformer stores x10 values: MSE/100 and MAE/10 '
                            'are degrees C or m/s); metrics are reported in both')
    group.add_argument('--series_d_model', default=768, type=int,
                       help=f'embedding width; {INPUT_HOURS} x d_model must be a square (768 -> 192x192 map)')
    group.add_argument('--series_stations_per_node', default=11, type=int,
                       help='stations embedded together (one backbone image per node and window)')
    group.add_argument('--series_head', default='correlation', choices=['correlation', 'pooled'],
                       help="correlation: Corrformer's multi-correlation decoder over the backbone's tokens (the "
                            "recipes'); pooled: the tokens' mean + time features of each future hour, Linear")
    group.add_argument('--series_heads', default=16, type=int, help='correlation heads of the decoder')
    group.add_argument('--series_node_tree', default=None, type=int, nargs='+', metavar='SIZE',
                       help="the decoder's node tree for its cross-node correlation, sizes whose product is the number "
                            'of nodes (the release: 7 50 for 350 nodes); default: one level of all nodes')
    group.add_argument('--series_affine', default='shared', choices=['shared', 'station'],
                       help="learnable affine after the per-window normalisation: shared, one weight and bias per "
                            "position in a node, the same for every node (the release's, 11 + 11 parameters); "
                            'station, one per station (3,850 + 3,850)')


# ----------------------------------------------------------------------------------------------
# Reading the files
# ----------------------------------------------------------------------------------------------

def split_paths(folder, data_set, split):
    prefix = SERIES_PREFIXES[data_set]
    return (os.path.join(folder, f'{prefix}_global_hourly_{split}.npy'),
            os.path.join(folder, f'data_time_{split}.npy'))


def check_layout(folder, data_set):
    """Raise FileNotFoundError listing every missing file of the Corrformer layout."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'--data_path {folder} is not a folder; {data_set} needs the folder of Corrformer\'s '
                                '.npy files (README, "Time-series forecasting")')
    expected = [path for split in SPLITS for path in split_paths(folder, data_set, split)]
    expected.append(os.path.join(folder, 'stations_sorted.npy'))
    missing = [os.path.basename(path) for path in expected if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f'{data_set} data in {folder} is incomplete: missing {", ".join(missing)} '
                                f'(expected {", ".join(os.path.basename(path) for path in expected)})')


def read_stations(folder):
    """(stations, 3) float32 latitude, longitude, elevation."""
    path = os.path.join(folder, 'stations_sorted.npy')
    stations = datasets.load_npy_restricted(path, frozenset()).astype(np.float32)
    if stations.ndim != 2 or stations.shape[1] != len(STATION_COLUMNS):
        raise ValueError(f'{path}: expected shape (stations, 3) for {", ".join(STATION_COLUMNS)}, '
                         f'got {stations.shape}. Replace it with the data set\'s stations_sorted.npy')
    if not np.isfinite(stations).all():
        raise ValueError(f'{path}: station {int(np.nonzero(~np.isfinite(stations).all(axis=1))[0][0])} has a '
                         'non-finite coordinate; every station needs a latitude, longitude and elevation')
    return stations


def nonfinite_places(series, first_hour=0):
    """(count, 'hour h station s, ...' of the first five) of the non-finite values of (T, stations) whose first row
    is hour `first_hour` of its file."""
    hours, stations = np.nonzero(~np.isfinite(series))
    return len(hours), ', '.join(f'hour {first_hour + h} station {s}' for h, s in zip(hours[:5], stations[:5]))


def read_series(path, num_stations, skip_corrupt=False):
    """(T, stations) float32 from a (T, stations, 1) file. Non-finite values (NaN, inf) are an error naming their
    hours and stations; with skip_corrupt they stay, and SeriesWindows skips the windows that hold them."""
    series = datasets.load_npy_restricted(path, frozenset())
    if series.ndim == 3 and series.shape[2] == 1:
        series = series[:, :, 0]
    if series.ndim != 2 or series.shape[1] != num_stations:
        raise ValueError(f'{path}: expected shape (hours, {num_stations} stations, 1) to match stations_sorted.npy, '
                         f'got {series.shape}. Replace it with the file of the data set, or point --data_path at '
                         'the folder its stations_sorted.npy belongs to')
    series = series.astype(np.float32)
    count, places = nonfinite_places(series)
    if count and not skip_corrupt:
        raise ValueError(f'{path}: {count} non-finite value(s) (NaN or inf), first at {places}; fill or interpolate '
                         'the gaps before training (the release has none), or pass --skip_corrupt true to skip the '
                         'windows that hold them')
    return series


# What Corrformer's data_time_{split}.npy object arrays hold: timestamps as datetime objects, pandas Timestamps or
# strings (np.save pickles them; np.load(allow_pickle=True) would run whatever a crafted file calls).
TIMESTAMP_GLOBALS = datasets.NUMPY_ARRAY_GLOBALS | {
    ('datetime', 'datetime'), ('datetime', 'date'), ('datetime', 'timedelta'), ('datetime', 'timezone'),
    ('pandas._libs.tslibs.timestamps', '_unpickle_timestamp')}


def time_features(path, num_hours):
    """(T, 4) float32 in [-0.5, 0.5]: hour of day, day of week, day of month, day of year (Corrformer's 'h' set)."""
    import pandas as pd  # only the time-series data sets need pandas' timestamp parsing
    raw = np.asarray(datasets.load_npy_restricted(path, TIMESTAMP_GLOBALS)).reshape(-1)
    if len(raw) != num_hours:
        raise ValueError(f'{path} has {len(raw)} timestamps but the series has {num_hours} hours; both files of a '
                         'split must come from the same download')
    try:
        stamps = pd.DatetimeIndex(pd.to_datetime(raw))
    except (ValueError, TypeError) as err:
        raise ValueError(f'{path}: its values are not timestamps pandas can read ({err}); Corrformer\'s '
                         'data_time_*.npy hold one date and hour per hour of the series') from err
    if stamps.isna().any():
        raise ValueError(f'{path}: timestamp {int(np.argmax(stamps.isna()))} is missing (NaT); every hour of the '
                         'series needs its date and hour')
    features = np.stack([stamps.hour / 23.0, stamps.day_of_week / 6.0, (stamps.day - 1) / 30.0,
                         (stamps.day_of_year - 1) / 365.0], axis=1) - 0.5
    return features.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------

def pack_window(values, features):
    """One sample tensor (WINDOW_HOURS, stations + 4): station values of the input hours (zeros for the hours to
    predict, as in Corrformer's decoder input) next to the time features of all WINDOW_HOURS hours."""
    known = torch.zeros(WINDOW_HOURS, values.shape[1], dtype=values.dtype)
    known[:INPUT_HOURS] = values[:INPUT_HOURS]
    return torch.cat([known, features], dim=1)


def unpack_window(samples):
    """(B, WINDOW_HOURS, stations + 4) -> input values (B, INPUT_HOURS, stations), time features
    (B, WINDOW_HOURS, 4)."""
    return samples[:, :INPUT_HOURS, :-TIME_FEATURES], samples[:, :, -TIME_FEATURES:]


class SeriesWindows(datasets.SkipsUnreadable):
    """Every window of one split: sample = pack_window(...) (no randomness), target = next PREDICT_HOURS hours.
    A window holding a non-finite value (possible only with skip_corrupt: read_series refuses them otherwise) is
    skipped and counted (datasets.SkipsUnreadable)."""

    def __init__(self, series, features, path, skip_corrupt=False):
        super().__init__(skip_corrupt)
        if len(series) < WINDOW_HOURS:
            raise ValueError(f'{path} has {len(series)} hours, fewer than one window of {INPUT_HOURS} input + '
                             f'{PREDICT_HOURS} predicted hours; use a longer split')
        self.series = torch.from_numpy(series)
        self.features = torch.from_numpy(features)
        self.path = path
        # Non-finite values before each hour, so that a window's count is one subtraction.
        self.nonfinite_before = np.concatenate([[0], np.cumsum(~np.isfinite(series).all(axis=1))])

    def __len__(self):
        return len(self.series) - WINDOW_HOURS + 1

    def read(self, index):
        window = slice(index, index + WINDOW_HOURS)
        values = self.series[window]
        if self.nonfinite_before[index + WINDOW_HOURS] > self.nonfinite_before[index]:
            count, places = nonfinite_places(values.numpy(), first_hour=index)
            raise datasets.UnreadableSampleError(
                f'{self.path}: window {index} (hours {index}..{index + WINDOW_HOURS - 1}) holds {count} non-finite '
                f'value(s), first at {places}')
        return pack_window(values, self.features[window]), values[INPUT_HOURS:].clone()


def load_split(folder, data_set, split, skip_corrupt=False):
    check_layout(folder, data_set)
    num_stations = len(read_stations(folder))
    series_path, time_path = split_paths(folder, data_set, split)
    series = read_series(series_path, num_stations, skip_corrupt)
    return SeriesWindows(series, time_features(time_path, len(series)), series_path, skip_corrupt)


def build_dataset(is_train, args):
    """(windows, 0): the training split, or --series_eval_split; 0 classes (the backbone gets no classifier)."""
    split = 'train' if is_train else args.series_eval_split
    return load_split(args.data_path, args.data_set, split, getattr(args, 'skip_corrupt_images', False)), 0


def training_mean(args):
    """Per-station mean of the training split (of its finite values): the training-mean baseline's forecast."""
    check_layout(args.data_path, args.data_set)
    series_path, _ = split_paths(args.data_path, args.data_set, 'train')
    series = read_series(series_path, len(read_stations(args.data_path)), getattr(args, 'skip_corrupt_images', False))
    return torch.from_numpy(np.nanmean(np.where(np.isfinite(series), series, np.nan), axis=0))


def seasonal_naive_hours(period):
    """Input hours the seasonal-naive forecast repeats: forecast hour h is the known hour one period (or a multiple
    of it) earlier, INPUT_HOURS - period + h mod period."""
    if not 1 <= period <= INPUT_HOURS:
        raise ValueError(f'--series_season_hours {period}: the seasonal-naive baseline repeats known hours, so the '
                         f'period must be 1 to {INPUT_HOURS} (the input window); 24 for the daily cycle')
    return torch.tensor([INPUT_HOURS - period + hour % period for hour in range(PREDICT_HOURS)])


def baseline_forecasts(samples, station_means, season_hours=24):
    """Forecasts that need no training, shaped like the targets (B, PREDICT_HOURS, stations): persistence (the last
    known hour), seasonal naive (the last season_hours known hours, repeated) and the training mean."""
    values, _ = unpack_window(samples)
    last_known = values[:, -1:, :].expand(-1, PREDICT_HOURS, -1)
    return {'persistence': last_known,
            'seasonal_naive': values[:, seasonal_naive_hours(season_hours).to(samples.device), :],
            'train_mean': station_means.to(samples)[None, None, :].expand_as(last_known)}


def build_task(args):
    """The forecasting task of these data sets (tasks.ForecastingTask) with its three baselines, on the evaluated
    split (--series_eval_split; its name goes into what the evaluation logs)."""
    seasonal_naive_hours(args.series_season_hours)  # a bad period fails before training
    station_means = training_mean(args)
    return tasks.ForecastingTask(lambda samples: baseline_forecasts(samples, station_means, args.series_season_hours),
                                 units_per_physical=args.series_units_per_physical, split=args.series_eval_split)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def backbone_kwargs(args):
    """A single-channel backbone without classifier; the recipe's kernel sizes come from --model_overrides."""
    return dict(in_chans=1, num_classes=0)




def build_model(args, backbone):
    check_layout(args.data_path, args.data_set)
    return SeriesForecaster(backbone, torch.from_numpy(read_stations(args.data_path)), d_model=args.series_d_model,
                            stations_per_node=args.series_stations_per_node, head=args.series_head,
                            heads=args.series_heads, node_tree=args.series_node_tree, affine=args.series_affine)


def map_side(d_model):
    """Side of the square map holding INPUT_HOURS x d_model embedding values."""
    side = math.isqrt(INPUT_HOURS * d_model)
    if side * side != INPUT_HOURS * d_model:
        raise ValueError(f'--series_d_model {d_model}: {INPUT_HOURS} x d_model must be a perfect square to reshape '
                         'into one square map, so d_model = 3 x a square, e.g. 12, 48, 192 or 768 (the release)')
    return side


def standardise(columns):
    """Zero mean, unit standard deviation per column (a constant column becomes zeros)."""
    std = columns.std(dim=0, unbiased=False)
    return (columns - columns.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))


def decompose(x, kernel_size=MOVING_AVERAGE_HOURS):
    """(seasonal, trend) of (B, L, C) series: the trend is a moving average over time with the ends repeated
    (Autoformer's and Corrformer's series decomposition); seasonal = x - trend."""
    pad = (kernel_size - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    trend = nn.functional.avg_pool1d(padded.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)
    return x - trend, trend


class NodeEmbedding(nn.Module):
    """Corrformer's DataEmbedding: circular Conv1d over a node's station values + Linear over the hours' time features
    + Linear over the node's standardised station coordinates, then dropout; (B * nodes, L, node_size) ->
    (B * nodes, L, d_model)."""

    def __init__(self, node_size, coordinates_per_node, d_model, dropout=DECODER_DROPOUT):
        super().__init__()
        self.values = nn.Conv1d(node_size, d_model, kernel_size=3, padding=1, padding_mode='circular', bias=False)
        nn.init.kaiming_normal_(self.values.weight, mode='fan_in', nonlinearity='leaky_relu')  # as Corrformer's
        self.time = nn.Linear(TIME_FEATURES, d_model, bias=False)
        self.position = nn.Linear(coordinates_per_node, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, node_values, features, node_coordinates):
        batch, hours = features.shape[:2]
        embedded = self.values(node_values.transpose(1, 2)).transpose(1, 2).reshape(batch, -1, hours,
                                                                                      self.time.out_features)
        embedded = embedded + self.time(features)[:, None] + self.position(node_coordinates)[None, :, None]
        return self.dropout(embedded.flatten(0, 1))


class HeadProjections(nn.Module):
    """Query/key/value projections split into heads, and the output projection (Corrformer's *CorrelationLayer)."""

    def __init__(self, d_model, heads):
        super().__init__()
        if d_model % heads:
            raise ValueError(f'--series_heads {heads} must divide --series_d_model {d_model}')
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split(self, queries, keys, values):
        """(B, L, C), (B, S, C) x 2 -> q, k, v as (B, L, heads, C / heads); the projected keys and values are
        zero-padded or cut to the queries' L hours."""
        batch, length, channels = queries.shape
        shape = (batch, length, self.heads, channels // self.heads)
        q = self.query(queries).view(shape)
        k, v = (nn.functional.pad(projection(x), (0, 0, 0, max(0, length - x.shape[1])))[:, :length].reshape(shape)
                for projection, x in ((self.key, keys), (self.value, values)))
        return q, k, v


def lag_correlation(q, k):
    """Circular cross-correlation over time (dim -3) by FFT, averaged over a head's channels: out[..., lag, h] =
    mean_e sum_t q[..., (t + lag) mod L, h, e] * k[..., t, h, e]."""
    length = q.shape[-3]
    q, k = q.float(), k.float()  # FFTs of 48 hours: not in half precision (cuFFT takes only powers of 2 there)
    spectrum = torch.fft.rfft(q, dim=-3) * torch.fft.rfft(k, dim=-3).conj()
    return torch.fft.irfft(spectrum, n=length, dim=-3).mean(dim=-1)


def roll_in_time(values, shift):
    """values (..., L, heads, E), integer shift (..., heads) -> out[..., t, h, :] = values[..., (t + shift) mod L, h, :]
    (time is dim -3)."""
    length = values.shape[-3]
    hours = torch.arange(length, device=values.device).view(length, 1)
    index = (hours + shift.unsqueeze(-2)) % length
    return values.gather(-3, index.unsqueeze(-1).expand_as(values))


class AutoCorrelation(nn.Module):
    """Autoformer's auto-correlation with time-delay aggregation, Corrformer's correlation of each leaf node.

    Written from the Autoformer/Corrformer papers: per head, the lag correlation of queries and keys (averaged over
    channels) picks the top int(log L) lags; the output is the softmax(correlation)-weighted sum of the values rolled
    by those lags."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.projections = HeadProjections(d_model, heads)

    def forward(self, queries, keys, values):
        q, k, v = self.projections.split(queries, keys, values)
        length = q.shape[1]
        weights, lags = lag_correlation(q, k).topk(max(1, int(math.log(length))), dim=1)  # (B, top_k, heads)
        weights = weights.softmax(dim=1)
        aggregated = sum(roll_in_time(v, lags[:, index]) * weights[:, index, None, :, None]
                         for index in range(lags.shape[1]))
        return self.projections.out(aggregated.flatten(2))


class CausalNodeConvolution(nn.Module):
    """Corrformer's CausalConv (one temporal-convolution block, kernel 3, weight-normalised, ReLU, dropout 0.2,
    residual) run along a sequence of nodes: (N, channels, nodes) -> same shape; node i sees nodes <= i only."""

    def __init__(self, channels, kernel_size=3, dropout=0.2):
        super().__init__()
        weight_norm = nn.utils.parametrizations.weight_norm
        self.first = weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size - 1))
        self.second = weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size - 1))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        nodes = x.shape[-1]
        y = self.dropout(torch.relu(self.first(x)[..., :nodes]))  # cutting the right padding makes it causal
        y = self.dropout(torch.relu(self.second(y)[..., :nodes]))
        return torch.relu(x + y)


class CrossNodeCorrelation(nn.Module):
    """Corrformer's cross-correlation among sibling nodes (written from the paper and the release's behaviour).

    Per head, each node's keys are correlated with the pivot (the mean of the siblings' queries); the best lag aligns
    the node's values to the pivot, scaled by sigmoid(its correlation); the nodes, ordered by that lag (largest
    first), go through a causal convolution along the node sequence, with a head's (channels x hours) as channels;
    then each node is put back in its order and shifted back by its lag."""

    def __init__(self, d_model, heads, hours=LABEL_HOURS + PREDICT_HOURS):
        super().__init__()
        self.projections = HeadProjections(d_model, heads)
        self.fusion = CausalNodeConvolution(d_model // heads * hours)

    def forward(self, queries, keys, values, nodes):
        """(B * nodes, L, C) siblings in consecutive groups of `nodes` -> (B * nodes, L, C)."""
        q, k, v = (x.reshape(-1, nodes, *x.shape[1:]) for x in self.projections.split(queries, keys, values))
        groups, _, length, heads, channels = v.shape
        pivot = q.mean(dim=1, keepdim=True)
        weight, lag = lag_correlation(pivot.expand_as(k), k).max(dim=2)  # (groups, nodes, heads)
        aligned = roll_in_time(v, -lag) * torch.sigmoid(weight)[:, :, None, :, None]  # value hour t - lag
        order = torch.argsort(length - lag, dim=1, stable=True)  # (groups, nodes, heads): largest lag first
        sequence = aligned.gather(1, order[:, :, None, :, None].expand_as(aligned))
        sequence = sequence.permute(0, 3, 4, 2, 1).reshape(groups * heads, channels * length, nodes)
        fused = self.fusion(sequence).reshape(groups, heads, channels, length, nodes).permute(0, 4, 3, 1, 2)
        fused = torch.empty_like(fused).scatter_(1, order[:, :, None, :, None].expand_as(fused), fused)
        return self.projections.out(roll_in_time(fused, lag).reshape(groups * nodes, length, -1))


class MultiCorrelation(nn.Module):
    """Corrformer's multi-correlation: the auto-correlation of every leaf node plus the mean over the levels of a node
    tree (`tree`: sizes whose product is the number of nodes) of the cross-node correlation among siblings, each
    level on node states averaged over their descendants and broadcast back to them."""

    def __init__(self, d_model, heads, tree, dropout=DECODER_DROPOUT):
        super().__init__()
        self.tree = list(tree)
        self.leaf = AutoCorrelation(d_model, heads)
        self.cross_node = CrossNodeCorrelation(d_model, heads)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory):
        length, memory_length, channels = x.shape[1], memory.shape[1], x.shape[2]
        x_tree = x.reshape(-1, *self.tree, length, channels)
        memory_tree = memory.reshape(-1, *self.tree, memory_length, channels)
        levels = []
        for level, size in enumerate(self.tree):
            deeper = tuple(range(level + 2, len(self.tree) + 1))  # tree dims below this level
            x_level = (x_tree.mean(dim=deeper) if deeper else x_tree).reshape(-1, length, channels)
            memory_level = (memory_tree.mean(dim=deeper) if deeper else memory_tree).reshape(-1, memory_length,
                                                                                             channels)
            out = self.cross_node(x_level, memory_level, memory_level, nodes=size)
            out = out.reshape(-1, *self.tree[:level + 1], *([1] * len(deeper)), length, channels)
            levels.append(out.expand_as(x_tree))
        intermediate = torch.stack(levels).mean(dim=0).reshape(x.shape)
        return self.dropout(self.leaf(x, memory, memory)) + self.dropout(intermediate)


class CorrelationDecoderLayer(nn.Module):
    """Corrformer's decoder layer: multi-correlation with itself, then with the backbone's tokens, then a
    position-wise feed-forward, each added to its input and followed by a series decomposition; the three trends are
    projected to the node's stations (circular Conv1d, kernel 3)."""

    def __init__(self, d_model, heads, node_size, tree, dropout=DECODER_DROPOUT):
        super().__init__()
        self.self_correlation = MultiCorrelation(d_model, heads, tree)
        self.cross_correlation = MultiCorrelation(d_model, heads, tree)
        hidden = round(d_model * 8 / 3)  # the release's d_ff 2048 at d_model 768
        self.feed_forward = nn.Sequential(nn.Linear(d_model, hidden, bias=False), nn.GELU(), nn.Dropout(dropout),
                                          nn.Linear(hidden, d_model, bias=False), nn.Dropout(dropout))
        self.trend_projection = nn.Conv1d(d_model, node_size, kernel_size=3, padding=1, padding_mode='circular',
                                          bias=False)

    def forward(self, x, memory):
        x, trend_self = decompose(x + self.self_correlation(x, x))
        x, trend_cross = decompose(x + self.cross_correlation(x, memory))
        x, trend_forward = decompose(x + self.feed_forward(x))
        trend = self.trend_projection((trend_self + trend_cross + trend_forward).transpose(1, 2)).transpose(1, 2)
        return x, trend


class CorrelationDecoder(nn.Module):
    """Decodes LABEL_HOURS known + PREDICT_HOURS future hours from the backbone's stage-4 tokens (Corrformer's
    decoder input: the seasonal part of the known hours then zeros, the trend then the window mean)."""

    def __init__(self, backbone_width, node_size, coordinates_per_node, d_model, heads, tree):
        super().__init__()
        self.memory_projection = nn.Linear(backbone_width, d_model)
        self.embedding = NodeEmbedding(node_size, coordinates_per_node, d_model)
        self.layer = CorrelationDecoderLayer(d_model, heads, node_size, tree)
        self.norm = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, node_size)

    def forward(self, tokens, normalised_nodes, features, node_coordinates):
        """tokens (B * nodes, T, width); normalised_nodes (B * nodes, INPUT_HOURS, node_size); features
        (B, WINDOW_HOURS, 4) -> (B * nodes, PREDICT_HOURS, node_size)."""
        seasonal, trend = decompose(normalised_nodes)
        known = slice(INPUT_HOURS - LABEL_HOURS, INPUT_HOURS)
        future = (normalised_nodes.shape[0], PREDICT_HOURS, normalised_nodes.shape[2])
        seasonal_init = torch.cat([seasonal[:, known], seasonal.new_zeros(future)], dim=1)
        trend_init = torch.cat([trend[:, known], normalised_nodes.mean(dim=1, keepdim=True).expand(future)], dim=1)
        x = self.embedding(seasonal_init, features[:, INPUT_HOURS - LABEL_HOURS:], node_coordinates)
        x, trend = self.layer(x, self.memory_projection(tokens))
        x = self.norm(x)
        seasonal_part = self.projection(x - x.mean(dim=1, keepdim=True))  # Corrformer's seasonal LayerNorm
        return (seasonal_part + trend_init + trend)[:, -PREDICT_HOURS:]


class PooledHead(nn.Module):
    """The simpler head: the mean of the backbone's tokens plus an embedding of each future hour's time features,
    GELU, Linear to the node's stations."""

    def __init__(self, backbone_width, node_size):
        super().__init__()
        self.future_time = nn.Linear(TIME_FEATURES, backbone_width)
        self.projection = nn.Linear(backbone_width, node_size)

    def forward(self, tokens, normalised_nodes, features, node_coordinates):
        pooled = tokens.mean(dim=1)
        batch = features.shape[0]
        hours = self.future_time(features[:, None, INPUT_HOURS:])  # (B, 1, PREDICT_HOURS, width)
        pooled = pooled.reshape(batch, -1, 1, pooled.shape[-1])
        return self.projection(nn.functional.gelu(pooled + hours)).flatten(0, 1)


class SeriesForecaster(nn.Module):
    """(B, WINDOW_HOURS, stations + 4) packed windows -> (B, PREDICT_HOURS, stations) forecasts, any batch size."""

    def __init__(self, backbone, stations, d_model, stations_per_node, head='correlation', heads=16, node_tree=None,
                 affine='shared'):
        super().__init__()
        if getattr(backbone, 'in_chans', 1) != 1:
            raise ValueError(f'the time-series backbone needs in_chans=1, got {backbone.in_chans}')
        self.side = map_side(d_model)
        self.num_stations = len(stations)
        self.node_size = min(stations_per_node, self.num_stations)
        self.num_nodes = -(-self.num_stations // self.node_size)
        padding = self.num_nodes * self.node_size - self.num_stations
        coordinates = nn.functional.pad(standardise(stations.float()), (0, 0, 0, padding))
        self.register_buffer('node_coordinates', coordinates.reshape(self.num_nodes, -1))
        # Per-window normalisation with a learnable affine (Corrformer's RevIN-style layer): per position in a node
        # and shared by all nodes (the release), or per station.
        if affine not in ('shared', 'station'):
            raise ValueError(f"--series_affine must be 'shared' or 'station', got {affine!r}")
        self.shared_affine = affine == 'shared'
        affine_size = self.node_size if self.shared_affine else self.num_stations
        self.affine_weight = nn.Parameter(torch.ones(affine_size))
        self.affine_bias = nn.Parameter(torch.zeros(affine_size))
        self.embedding = NodeEmbedding(self.node_size, self.node_coordinates.shape[1], d_model)
        self.backbone = backbone
        if head == 'correlation':
            tree = node_tree or [self.num_nodes]
            if math.prod(tree) != self.num_nodes:
                raise ValueError(f'--series_node_tree {" ".join(map(str, tree))}: the sizes must multiply to the '
                                 f'{self.num_nodes} nodes ({self.num_stations} stations in nodes of {self.node_size})')
            self.head = CorrelationDecoder(backbone.num_features, self.node_size, self.node_coordinates.shape[1],
                                           d_model, heads, tree)
        else:
            self.head = PooledHead(backbone.num_features, self.node_size)

    def forward(self, samples):
        values, features = unpack_window(samples)
        batch = values.shape[0]
        mean = values.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(values.var(dim=1, keepdim=True, unbiased=False) + NORMALISATION_EPS).detach()
        weight, bias = self.station_affine()
        normalised = (values - mean) / std * weight + bias

        padding = self.num_nodes * self.node_size - self.num_stations
        nodes = nn.functional.pad(normalised, (0, padding)).reshape(batch, INPUT_HOURS, self.num_nodes, self.node_size)
        nodes = nodes.transpose(1, 2).flatten(0, 1)  # (B * nodes, INPUT_HOURS, node_size)
        embedded = self.embedding(nodes, features[:, :INPUT_HOURS], self.node_coordinates)
        maps = embedded.reshape(batch * self.num_nodes, 1, self.side, self.side)
        # Stage-4 tokens (B * nodes, h * w, width), each through the backbone's final LayerNorm.
        tokens = self.backbone.norm(self.backbone.forward_features(maps).flatten(2).transpose(1, 2))

        forecast = self.head(tokens, nodes, features, self.node_coordinates)  # (B * nodes, PREDICT_HOURS, node_size)
        forecast = forecast.reshape(batch, self.num_nodes, PREDICT_HOURS, self.node_size).transpose(1, 2)
        forecast = forecast.reshape(batch, PREDICT_HOURS, -1)[:, :, :self.num_stations]
        return (forecast - bias) / (weight + AFFINE_EPS) * std + mean

    def station_affine(self):
        """(weight, bias) of every station: the shared affine repeated over the nodes (station s takes position
        s mod node size), or the per-station parameters."""
        if not self.shared_affine:
            return self.affine_weight, self.affine_bias
        return tuple(parameter.repeat(self.num_nodes)[:self.num_stations]
                     for parameter in (self.affine_weight, self.affine_bias))


# The release's Global Temp / Global Wind recipe (Time-Series/scripts, configs/time_series/): Adam, lr 1e-4 for two
# epochs then halved every epoch, no weight decay, 10 epochs with early stopping (patience 3), one window per batch.
# Forecasting takes MSE: no class count, label smoothing, loss choice, mixup or image augmentation, and the model sets
# its own input.
SPECS = {name: specs.DataSetSpec(
    name, build_dataset, extra='timeseries',
    defaults={'batch_size': 1, 'epochs': 10, 'opt': 'adam', 'lr': 1e-4, 'weight_decay': 0.0, 'warmup_epochs': 0,
              'lr_schedule': 'step', 'lr_step_gamma': 0.5, 'lr_step_first_epoch': 2, 'early_stop_patience': 3},
    unused={**specs.IMAGE_AUGMENTATION_OFF, **specs.IMAGE_EVALUATION_OFF, **specs.IMAGE_INPUT_OFF,
            **specs.CLASSIFICATION_OFF},
    add_arguments=add_arguments,
    backbone_kwargs=backbone_kwargs, build_model=build_model, build_task=build_task, mixup=False,
    backbone_prefix='backbone.', image_input=False) for name in SERIES_PREFIXES}
