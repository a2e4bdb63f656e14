"""Run a trained model on your files: one row of top-k class names and probabilities per input.

    python tools/predict.py --checkpoint runs/digits/checkpoint-best.pth --inputs photos/ extra.png --out preds.csv
    python tools/predict.py --checkpoint unireplknet_s.in1k --inputs photos/ --out preds.jsonl   (released weights)
    python tools/predict.py --checkpoint runs/temp/checkpoint-best.pth --split test --out forecasts.csv

--checkpoint is a checkpoint main.py wrote, or a released/timm model name (`arch.tag`, weights from the Hugging Face
hub or the torch hub cache). What the run was trained with comes from the checkpoint: the model and its overrides,
--input_size, the data set and its options (frames, views, points, ...) and the class names (main.py records them;
--label_map FILE, one name per line, names classes of checkpoints without them). The model runs re-parameterised
(the deployed form) with the data set's evaluation preprocessing, including the views that `main.py --eval` averages
(video: segments x crops, point clouds: rotations, their class probabilities averaged), so the top-1 of a labelled
folder equals `main.py --eval`'s (for point clouds: with --pc_test_score ensemble; the default per_rotation scores
each rotation alone).

--inputs are files and/or folders (searched recursively) of the data set's kind: images, WAV/FLAC recordings, video
clips or point files. --out is a .csv (path, label, prob, then label_1, prob_1 ... label_k, prob_k) or a .jsonl (one
object per input with the same fields, top-k as a list). The trained weights are used; --use_ema takes the EMA.

Forecasting checkpoints (GLOBAL_TEMP, GLOBAL_WIND) take no --inputs: they write the forecasts of every window of
--split (default: the split the run evaluated) of the data folder the run used (or --data_path): one row per window
and station with the first forecast hour's timestamp and the PREDICT_HOURS values, in the data set's units.
"""
import argparse
import csv
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python tools/predict.py`: make the repository's modules importable
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.data import ImageNetInfo, create_transform, resolve_data_config  # noqa: E402
from timm.utils import reparameterize_model  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402
from tqdm import tqdm  # noqa: E402

import datasets  # noqa: E402
import main as train_main  # noqa: E402
import specs  # noqa: E402
from checkpoint import CheckpointError, load_checkpoint_file, load_weights_for_tool  # noqa: E402
from modalities import time_series  # noqa: E402
from modalities.audio import read_label_map  # noqa: E402
from modalities.audio_folder import AUDIO_EXTENSIONS, AudioFiles  # noqa: E402
from modalities.point_folder import POINT_EXTENSIONS, point_files_dataset  # noqa: E402
from modalities.video import VIDEO_EXTENSIONS, NormaliseFrames, VideoClips  # noqa: E402
from tools.named_model import IMAGE_EXTENSIONS  # noqa: E402

# The kind of input read by the module that defines each data set's spec (specs.SPEC_MODULES).
INPUT_KINDS = {'datasets': 'image', 'modalities.audio': 'audio', 'modalities.audio_folder': 'audio',
               'modalities.video': 'video', 'modalities.point_cloud': 'points', 'modalities.point_folder': 'points',
               'modalities.time_series': 'forecast'}
EXTENSIONS = {'image': IMAGE_EXTENSIONS, 'audio': AUDIO_EXTENSIONS, 'video': VIDEO_EXTENSIONS,
              'points': POINT_EXTENSIONS}
NO_LABEL = -1


def get_args_parser():
    parser = argparse.ArgumentParser(description='Top-k predictions (or forecasts) of a trained model on files')
    parser.add_argument('--checkpoint', required=True,
                        help="a checkpoint written by main.py, or a released/timm model name (e.g. unireplknet_s.in1k)")
    parser.add_argument('--inputs', nargs='+', default=[], metavar='PATH',
                        help='files and/or folders (recursive) of the data set\'s kind: images, .wav/.flac, clips, '
                             'point files')
    parser.add_argument('--out', required=True, metavar='FILE', help='.csv or .jsonl')
    parser.add_argument('--topk', default=5, type=int, help='classes per row (default 5)')
    parser.add_argument('--batch_size', default=32, type=int)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--num_workers', default=0, type=int, help='DataLoader worker processes')
    parser.add_argument('--use_ema', action='store_true', help="the checkpoint's EMA weights instead of the trained")
    parser.add_argument('--label_map', default=None, metavar='FILE',
                        help='class names, one per line in label order (default: the names the checkpoint records)')
    parser.add_argument('--input_size', default=None, type=int, help='override the checkpoint\'s --input_size')
    parser.add_argument('--data_path', default=None, help='forecasting: the data folder (default: the run\'s)')
    parser.add_argument('--split', default=None, choices=time_series.SPLITS,
                        help='forecasting: the split to forecast (default: the one the run evaluated)')
    parser.add_argument('--unsafe_load_checkpoint', action='store_true',
                        help='allow checkpoints that need arbitrary unpickling (only for files you trust)')
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Model, options and class names from the checkpoint
# ---------------------------------------------------------------------------------------------------------------

def is_model_name(text):
    return not os.path.exists(text) and '://' not in text and timm.is_model(text.split('.')[0])


def run_options(checkpoint, source, cli):
    """main.py's options of the run that wrote the checkpoint (its defaults for anything it did not record), with
    the few this tool overrides."""
    saved = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    if saved is None:
        raise CheckpointError(f'{source} records no run options (it was not written by main.py); pass a released '
                              'model name instead (e.g. --checkpoint unireplknet_s.in1k), or evaluate it with main.py '
                              '--eval true --resume FILE and the options it was trained with')
    args = train_main.parse_args([])
    for key, value in (saved if isinstance(saved, dict) else vars(saved)).items():
        setattr(args, key, value)
    args.eval, args.device, args.num_workers, args.distributed = True, cli.device, cli.num_workers, False
    args.skip_corrupt_images = False  # every input gets a row: an unreadable one is an error naming it
    if cli.input_size is not None:
        args.input_size = cli.input_size
    if cli.data_path is not None:
        args.data_path = cli.data_path
    return args


def class_names(recorded, nb_classes, label_map):
    """--label_map's names, else the checkpoint's, else the class indices as strings."""
    names = read_label_map(label_map) if label_map else recorded
    if names is None:
        print('The checkpoint records no class names: labels are class indices (pass --label_map FILE)')
        return [str(index) for index in range(nb_classes)]
    if len(names) != nb_classes:
        raise ValueError(f'{label_map or "the checkpoint"} names {len(names)} classes but the model has {nb_classes}')
    return list(names)


def deployed(model, device):
    """The structurally re-parameterised model in eval mode, as deployed (and as main.py --reparam evaluates)."""
    return reparameterize_model(model.eval()).to(device)


def trained_model(cli):
    """(model, args, class names) of a main.py checkpoint."""
    checkpoint = load_checkpoint_file(cli.checkpoint, unsafe=cli.unsafe_load_checkpoint)
    args = run_options(checkpoint, cli.checkpoint, cli)
    model = train_main.build_model(args)
    load_weights_for_tool(model, checkpoint, cli.checkpoint, use_ema=cli.use_ema)
    names = None
    if input_kind(args.data_set) != 'forecast':
        names = class_names(checkpoint.get('class_names'), args.nb_classes, cli.label_map)
    return deployed(model, cli.device), args, names


def released_model(cli):
    """(model, image transform, class names) of a released/timm name: its weights, its own evaluation transform
    (timm's data config: input size, crop, interpolation, mean/std) and ImageNet's class names."""
    if cli.use_ema:
        raise ValueError('--use_ema: released weights have no separate EMA; drop --use_ema')
    model = timm.create_model(cli.checkpoint, pretrained=True)
    config = resolve_data_config(model=model)
    if cli.input_size is not None:
        config['input_size'] = (3, cli.input_size, cli.input_size)
    info = {1000: 'imagenet-1k', 21841: 'imagenet-22k'}.get(model.num_classes)
    recorded = None
    if cli.label_map is None and info is not None:
        imagenet = ImageNetInfo(info)
        recorded = [imagenet.index_to_description(index) for index in range(model.num_classes)]
    names = class_names(recorded, model.num_classes, cli.label_map)
    print(f'{cli.checkpoint}: released weights, evaluation transform {config}')
    return deployed(model, cli.device), create_transform(**config, is_training=False), names


def input_kind(data_set):
    return INPUT_KINDS[specs.SPEC_MODULES[data_set]]


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def list_inputs(inputs, extensions):
    """Every file named or found (recursively, sorted) in the folders named, with one of `extensions`."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, files in os.walk(item) for name in files
                           if name.lower().endswith(extensions))
            if not found:
                print(f'{item}: no {"/".join(extensions)} files in it', file=sys.stderr)
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f'--inputs {item}: no such file or folder')
    if not paths:
        raise FileNotFoundError(f'--inputs: no input files ({"/".join(extensions)}) found')
    return paths


class ImageFiles(datasets.SkipsUnreadable):
    """Image files with the evaluation transform; an unreadable file is an error naming it."""

    def __init__(self, paths, transform):
        super().__init__(skip_corrupt=False)
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def read(self, index):
        try:
            image = pil_loader(self.paths[index])
        except OSError as error:
            raise datasets.UnreadableSampleError(f"Cannot read image '{self.paths[index]}' ({error}); replace it "
                                                 'or leave it out of --inputs') from error
        return self.transform(image), NO_LABEL


def input_dataset(kind, paths, args, names, image_transform=None):
    """The inputs as the data set's evaluation samples (label NO_LABEL): the preprocessing and views of --eval."""
    samples = [(path, NO_LABEL) for path in paths]
    if kind == 'image':
        return ImageFiles(paths, image_transform or datasets.build_transform(False, args))
    if kind == 'audio':
        return AudioFiles(samples, names, train=False)
    if kind == 'video':
        return VideoClips(samples, len(names), False, NormaliseFrames(*datasets.normalization(args)), args)
    return point_files_dataset(samples, names, False, args)


# ---------------------------------------------------------------------------------------------------------------
# Running and writing
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def class_probabilities(model, dataset, batch_size, device, num_workers):
    """(N, classes) probabilities, each the mean over the sample's views (engine.evaluate's average)."""
    views = getattr(dataset, 'eval_views', 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    results = []
    for samples, _ in tqdm(loader, desc='predict', unit='batch', file=sys.stderr):
        samples = samples.to(device)
        if views > 1:
            samples = samples.flatten(0, 1)
        logits = torch.cat([model(chunk) for chunk in samples.split(batch_size)]).float()
        results.append(logits.softmax(dim=-1).view(-1, views, logits.shape[-1]).mean(dim=1).cpu())
    return torch.cat(results)


def prediction_rows(paths, probabilities, names, topk):
    """One dict per input: path, label, prob, and the top-k as label_i / prob_i."""
    values, indices = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
    for path, row_values, row_indices in zip(paths, values.tolist(), indices.tolist()):
        row = {'path': path, 'label': names[row_indices[0]], 'prob': row_values[0]}
        for rank, (value, index) in enumerate(zip(row_values, row_indices), start=1):
            row[f'label_{rank}'], row[f'prob_{rank}'] = names[index], value
        yield row


def write_rows(path, rows, jsonl_row=lambda row: row):
    """rows (dicts with the same keys) to a .csv with a header, or to a .jsonl (jsonl_row shapes each object)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rows = list(rows)
    with open(path, 'w', newline='') as f:
        if path.endswith('.jsonl'):
            f.writelines(json.dumps(jsonl_row(row)) + '\n' for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f'wrote {len(rows)} rows to {path}')


def topk_object(row):
    """A .jsonl object: path, label, prob and 'topk': [{label, prob}, ...]."""
    ranks = [key[len('label_'):] for key in row if key.startswith('label_')]
    return {'path': row['path'], 'label': row['label'], 'prob': row['prob'],
            'topk': [{'label': row[f'label_{rank}'], 'prob': row[f'prob_{rank}']} for rank in ranks]}


@torch.no_grad()
def forecast_rows(model, args, split, batch_size, device):
    """One dict per window and station: window, first forecast hour, station, hour_1 .. hour_PREDICT_HOURS."""
    windows = time_series.load_split(args.data_path, args.data_set, split)
    _, time_path = time_series.split_paths(args.data_path, args.data_set, split)
    stamps = np.asarray(np.load(time_path, allow_pickle=True)).reshape(-1)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size)
    window = 0
    for samples, _ in tqdm(loader, desc=f'forecast {split}', unit='batch', file=sys.stderr):
        for forecast in model(samples.to(device)).float().cpu():       # (PREDICT_HOURS, stations)
            first_hour = str(stamps[window + time_series.INPUT_HOURS])
            for station, values in enumerate(forecast.T.tolist()):
                yield {'window': window, 'first_hour': first_hour, 'station': station,
                       **{f'hour_{hour}': value for hour, value in enumerate(values, start=1)}}
            window += 1


def main(cli):
    if not cli.out.endswith(('.csv', '.jsonl')):
        raise ValueError(f'--out {cli.out}: write a .csv or a .jsonl file')
    if cli.topk < 1:
        raise ValueError(f'--topk must be at least 1, got {cli.topk}')
    if is_model_name(cli.checkpoint):
        model, transform, names = released_model(cli)
        kind, args = 'image', None
    else:
        model, args, names = trained_model(cli)
        kind, transform = input_kind(args.data_set), None
    if kind == 'forecast':
        if cli.inputs:
            raise ValueError(f'--data_set {args.data_set} checkpoints forecast the windows of a split: drop --inputs '
                             f'and choose --split ({", ".join(time_series.SPLITS)})')
        split = cli.split or args.series_eval_split
        write_rows(cli.out, forecast_rows(model, args, split, cli.batch_size, cli.device))
        return
    paths = list_inputs(cli.inputs, EXTENSIONS[kind])
    dataset = input_dataset(kind, paths, args, names, transform)
    probabilities = class_probabilities(model, dataset, cli.batch_size, cli.device, cli.num_workers)
    write_rows(cli.out, prediction_rows(paths, probabilities, names, cli.topk), topk_object)


if __name__ == '__main__':
    try:
        main(get_args_parser().parse_args())
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f'error: {error}')
