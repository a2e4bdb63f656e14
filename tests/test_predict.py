"""tools/predict.py: predictions on files from what a checkpoint records, equal to `main.py --eval`; and the tools'
weight loading (checkpoint.load_weights_for_tool): trained weights unless --use_ema, said either way."""
import csv
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import engine
import main as train_main
import unireplknet
from checkpoint import CheckpointError, to_plain_data
from datasets import build_dataset
from engine import Precision
from modalities import time_series
from tools import named_model, predict
from train_helpers import (NUM_CLASSES, TINY_UNIREPLKNET, assert_succeeded, make_tiny_dataset, run_main,
                           tiny_data_args)
from weather_data import write_quickstart_folder

pytestmark = pytest.mark.usefixtures('single_thread')

CLASS_NAMES = [f'class_{label}' for label in range(NUM_CLASSES)]


def predict_cli(*argv):
    return predict.get_args_parser().parse_args([*argv, '--device', 'cpu'])


def read_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def folder_accuracy(rows):
    """Top-1 accuracy (%) of prediction rows whose path's parent folder is the true class name."""
    return 100.0 * sum(row['label'] == os.path.basename(os.path.dirname(row['path'])) for row in rows) / len(rows)


def save_run_checkpoint(path, args, model, class_names=None, model_ema=None):
    """What main.py's Checkpointer writes that predict reads: weights, the run's options, class names."""
    state = {'model': model.state_dict(), 'args': to_plain_data(args)}
    if class_names is not None:
        state['class_names'] = class_names
    if model_ema is not None:
        state['model_ema'] = model_ema.state_dict()
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
    """A tiny model trained briefly in-process on the tiny image folder, saved as main.py would."""
    base = tmp_path_factory.mktemp('images')
    train, val = make_tiny_dataset(str(base))
    args = train_main.parse_args([*tiny_data_args(train, val), '--model_overrides', TINY_UNIREPLKNET,
                                  '--aa', 'none', '--reprob', '0', '--mixup', '0', '--cutmix', '0'])
    dataset, _ = build_dataset(is_train=True, args=args)
    model = train_main.build_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    for _ in range(4):
        for images, targets in loader:
            loss = torch.nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    checkpoint = save_run_checkpoint(base / 'checkpoint.pth', args, model.eval(), CLASS_NAMES)
    return dict(args=args, model=model, checkpoint=checkpoint, val=val)


def test_top1_on_a_labelled_folder_equals_evaluation_with_class_names(image_run, tmp_path):
    """The rows' top-1 accuracy equals engine.evaluate (what main.py --eval runs) on the same folder, and every
    row's top-1 is the training-form model's argmax under the evaluation transform."""
    out = str(tmp_path / 'predictions.csv')
    predict.main(predict_cli('--checkpoint', image_run['checkpoint'], '--inputs', image_run['val'], '--out', out))
    rows = read_rows(out)
    dataset, _ = build_dataset(is_train=False, args=image_run['args'])
    loader = torch.utils.data.DataLoader(dataset, batch_size=7)
    stats = engine.evaluate(loader, image_run['model'], torch.device('cpu'), Precision(torch.device('cpu'), False))
    assert len(rows) == len(dataset) == 21
    assert folder_accuracy(rows) == pytest.approx(stats['acc1'])
    assert stats['acc1'] > 50  # learnt: the rows below are not one class everywhere
    with torch.no_grad():
        logits = image_run['model'](torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert [row['path'] for row in rows] == [path for path, _ in dataset.samples]
    assert [row['label'] for row in rows] == [CLASS_NAMES[i] for i in logits.argmax(1).tolist()]
    probabilities = logits.softmax(1)
    for row, row_probabilities in zip(rows, probabilities):
        top = row_probabilities.topk(NUM_CLASSES)
        assert [row[f'label_{k}'] for k in (1, 2, 3)] == [CLASS_NAMES[i] for i in top.indices.tolist()]
        # the re-parameterised model against the training form: float32 rounding of a few layers
        assert [float(row[f'prob_{k}']) for k in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert float(row['prob']) == float(row['prob_1'])


def test_jsonl_rows_carry_the_topk_and_label_map_renames(image_run, tmp_path):
    label_map = tmp_path / 'names.txt'
    label_map.write_text('red\ngreen\nblue\n')
    out = str(tmp_path / 'predictions.jsonl')
    image = os.path.join(image_run['val'], 'class_2', '0.png')
    predict.main(predict_cli('--checkpoint', image_run['checkpoint'], '--inputs', image, '--out', out, '--topk', '2',
                             '--label_map', str(label_map)))
    [row] = [json.loads(line) for line in open(out)]
    assert row['path'] == image and row['label'] in ('red', 'green', 'blue')
    assert [entry['label'] for entry in row['topk']][0] == row['label'] and len(row['topk']) == 2
    assert row['topk'][0]['prob'] >= row['topk'][1]['prob']


def test_bad_inputs_are_named(image_run, tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such_folder'):
        predict.main(predict_cli('--checkpoint', image_run['checkpoint'], '--inputs', str(tmp_path / 'no_such_folder'),
                                 '--out', str(tmp_path / 'p.csv')))
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    with pytest.raises(RuntimeError, match='broken.png'):
        predict.main(predict_cli('--checkpoint', image_run['checkpoint'], '--inputs', str(broken),
                                 '--out', str(tmp_path / 'p.csv')))
    with pytest.raises(ValueError, match='.csv or a .jsonl'):
        predict.main(predict_cli('--checkpoint', image_run['checkpoint'], '--inputs', str(broken),
                                 '--out', str(tmp_path / 'p.txt')))
    bare = tmp_path / 'bare.pth'
    torch.save(image_run['model'].state_dict(), bare)
    with pytest.raises(CheckpointError, match='records no run options'):
        predict.main(predict_cli('--checkpoint', str(bare), '--inputs', image_run['val'],
                                 '--out', str(tmp_path / 'p.csv')))


def test_released_name_uses_its_weights_transform_and_imagenet_names(tmp_path, monkeypatch):
    """A released name: the file in the torch hub cache (here random weights of the real architecture), timm's data
    config (resize 256, centre crop 224, bicubic) and ImageNet-1K's class names."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))   # torch.hub.get_dir() follows it
    os.makedirs(tmp_path / 'torch_home' / 'hub' / 'checkpoints')
    model = unireplknet.unireplknet_a().eval()
    torch.save({'model': model.state_dict()},
               tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'unireplknet_a_in1k_224_acc77.03.pth')
    photos = tmp_path / 'photos'
    os.makedirs(photos)
    for name, image in zip(('a.png', 'b.png'), named_model.skimage_photos()):
        image.save(photos / name)
    out = str(tmp_path / 'p.csv')
    predict.main(predict_cli('--checkpoint', 'unireplknet_a.in1k', '--inputs', str(photos), '--out', out,
                             '--batch_size', '2'))
    rows = read_rows(out)
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(photos / name).convert('RGB')) for name in ('a.png', 'b.png')]))
    names = ImageNetInfo()
    assert [row['label'] for row in rows] == [names.index_to_description(i) for i in logits.argmax(1).tolist()]


def test_forecasting_checkpoint_writes_the_forecasts_of_the_split(tmp_path):
    folder = write_quickstart_folder(str(tmp_path / 'weather'))
    args = train_main.parse_args(['--data_set', 'GLOBAL_TEMP', '--data_path', folder, '--model_overrides',
                                  TINY_UNIREPLKNET, '--series_d_model', '12', '--series_heads', '2', '--device', 'cpu',
                                  '--series_stations_per_node', '2'])
    args.nb_classes = 0
    model = train_main.build_model(args).eval()
    checkpoint = save_run_checkpoint(tmp_path / 'checkpoint.pth', args, model)
    out = str(tmp_path / 'forecasts.csv')
    predict.main(predict_cli('--checkpoint', checkpoint, '--split', 'test', '--out', out, '--batch_size', '64'))
    rows = read_rows(out)
    windows = time_series.load_split(folder, 'GLOBAL_TEMP', 'test')
    stations = windows.series.shape[1]
    assert len(rows) == len(windows) * stations
    with torch.no_grad():
        expected = model(torch.stack([windows[i][0] for i in (0, len(windows) - 1)]))
    stamps = np.load(time_series.split_paths(folder, 'GLOBAL_TEMP', 'test')[1], allow_pickle=True)
    for window, forecast in zip((0, len(windows) - 1), expected):
        for station in range(stations):
            row = rows[window * stations + station]
            assert int(row['window']) == window and int(row['station']) == station
            assert row['first_hour'] == str(stamps[window + time_series.INPUT_HOURS])
            values = [float(row[f'hour_{hour}']) for hour in range(1, time_series.PREDICT_HOURS + 1)]
            assert values == pytest.approx(forecast[:, station].tolist(), rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------- the tools load what they say

def test_tools_load_the_trained_weights_unless_use_ema(tmp_path, capsys):
    kwargs = dict(num_classes=3, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], kernel_sizes=[[3], [7], [7], [3]])
    trained, ema = (named_model.build_named_model('unireplknet_a', **kwargs) for _ in range(2))
    path = str(tmp_path / 'checkpoint-best.pth')
    torch.save({'model': trained.state_dict(), 'model_ema': ema.state_dict()}, path)

    loaded = named_model.build_named_model('unireplknet_a', path, **kwargs)
    assert torch.equal(loaded.head.weight, trained.head.weight)
    assert 'trained weights (not the EMA)' in capsys.readouterr().out
    loaded = named_model.build_named_model('unireplknet_a', path, use_ema=True, **kwargs)
    assert torch.equal(loaded.head.weight, ema.head.weight)
    assert 'EMA weights' in capsys.readouterr().out

    torch.save({'model': trained.state_dict()}, path)
    with pytest.raises(CheckpointError, match='no EMA weights'):
        named_model.build_named_model('unireplknet_a', path, use_ema=True, **kwargs)


def test_predict_takes_the_ema_only_with_use_ema(image_run, tmp_path):
    model = image_run['model']
    ema = train_main.build_model(image_run['args']).eval()  # other (random) weights as the EMA
    checkpoint = save_run_checkpoint(tmp_path / 'ema.pth', image_run['args'], model, CLASS_NAMES, model_ema=ema)
    image = os.path.join(image_run['val'], 'class_0', '0.png')
    rows = {}
    for flag in ([], ['--use_ema']):
        out = str(tmp_path / f'p{len(flag)}.csv')
        predict.main(predict_cli('--checkpoint', checkpoint, '--inputs', image, '--out', out, *flag))
        rows[bool(flag)] = read_rows(out)[0]
    dataset, _ = build_dataset(is_train=False, args=image_run['args'])
    sample = dataset[0][0][None]
    with torch.no_grad():
        for use_ema, weights in ((False, model), (True, ema)):
            assert float(rows[use_ema]['prob']) == pytest.approx(weights(sample).softmax(1).max().item(), abs=1e-5)


# ---------------------------------------------------------------- through main.py

@pytest.mark.slow
def test_predict_after_main_py_training_equals_main_py_eval(tmp_path):
    """main.py records the class names; predict's top-1 on the validation folder equals main.py --eval's."""
    train, val = make_tiny_dataset(str(tmp_path))
    argv = [*tiny_data_args(train, val), '--model_overrides', TINY_UNIREPLKNET, '--batch_size', '8',
            '--warmup_epochs', '0', '--lr', '2e-3', '--mixup', '0', '--cutmix', '0']
    output = str(tmp_path / 'run')
    assert_succeeded(run_main([*argv, '--epochs', '2', '--output_dir', output]))
    checkpoint = os.path.join(output, 'checkpoint-best.pth')
    assert torch.load(checkpoint, weights_only=True)['class_names'] == CLASS_NAMES
    completed = run_main([*argv, '--eval', 'true', '--resume', checkpoint])
    assert_succeeded(completed)
    evaluated = float(re.search(r'Accuracy of the network on 21 test images: (\S+)%', completed.stdout).group(1))
    out = str(tmp_path / 'predictions.csv')
    predict.main(predict_cli('--checkpoint', checkpoint, '--inputs', val, '--out', out))
    assert folder_accuracy(read_rows(out)) == pytest.approx(evaluated, abs=1e-4)
