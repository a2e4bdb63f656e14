"""--data_set audio_folder and point_folder: a researcher's own recordings and scans as class folders
(train/<class>/..., val/<class>/...), with image_folder's errors, skip counting and resume, on the real data the
other tests build (synthesised speech of Debian's espeak-ng/flite, surface samplings of libcgal-demo's meshes)."""
import argparse
import csv
import os
import re
import shutil

import numpy as np
import pytest
import soundfile
import torch
import trimesh

import datasets
import main as train_main
from modalities import audio, audio_folder, point_folder
from tools import make_modelnet_from_meshes, predict
from train_helpers import assert_same_training_state, assert_succeeded, read_log, run_killed_after_each, run_main
from conftest import skip_unless_ci
from test_audio import ESPEAK_VOICES, FLITE_VOICES, WORDS, build_spoken_commands, speech_tools  # noqa: F401 (fixture)
from test_point_cloud import MESH_DIR, MESHES, RAW_POINTS, TINY_ARGS

pytestmark = pytest.mark.usefixtures('single_thread')

POINT_WRITERS = {  # file name ending -> writer
    '_comma.txt': lambda path, points: np.savetxt(path, points, fmt='%.6f', delimiter=','),   # x,y,z,nx,ny,nz
    '_space.txt': lambda path, points: np.savetxt(path, points[:, :3], fmt='%.6f'),
    '.npy': lambda path, points: np.save(path, points[:, :3]),
    '.ply': lambda path, points: trimesh.PointCloud(points[:, :3]).export(path),
}


def write_point_folder(root, samples, class_names):
    """root/<split>/<class>/<n>.<format>, the formats taking turns."""
    formats = list(POINT_WRITERS)
    for split, folder in (('train', 'train'), ('test', 'val')):
        for number, (label, points) in enumerate(samples[split]):
            name = formats[number // len(class_names) % len(formats)]  # every class in every format
            path = os.path.join(root, folder, class_names[label], f'{number:03d}{name}')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            POINT_WRITERS[name](path, points)
    return str(root)


@pytest.fixture(scope='module')
def point_samples():
    if not all(os.path.isfile(os.path.join(MESH_DIR, f'{name}.off')) for name in MESHES):
        skip_unless_ci(f'libcgal-demo meshes missing in {MESH_DIR}; .ci/run unpacks them (see tests/test_point_cloud.py)')
    return make_modelnet_from_meshes.make_samples(make_modelnet_from_meshes.load_meshes(MESH_DIR, MESHES),
                                                  {'train': 20, 'test': 5}, RAW_POINTS)


@pytest.fixture(scope='module')
def point_tree(point_samples, tmp_path_factory):
    return write_point_folder(tmp_path_factory.mktemp('points'), point_samples, list(MESHES))


def point_args(data_path, **overrides):
    args = argparse.Namespace(data_path=data_path, nb_classes=len(MESHES), pc_points=128, pc_fps_points=160,
                              pc_test_rotations=2, pc_test_score='ensemble', skip_corrupt_images=False, mixup=0.0, cutmix=0.0,
                              cutmix_minmax=None)
    vars(args).update(overrides)
    return args


def test_point_formats_give_the_same_xyz(point_samples, tmp_path):
    _, points = point_samples['train'][0]
    for name, write in POINT_WRITERS.items():
        path = str(tmp_path / f'cloud{name}')
        write(path, points)
        # text keeps 6 decimals of float32 values already rounded to 6 decimals: equal to float32 rounding
        np.testing.assert_allclose(point_folder.read_points(path), points[:, :3], rtol=0, atol=1e-6, err_msg=name)


def test_point_folder_classes_samples_and_views(point_tree):
    train, nb_classes = point_folder.build_dataset(True, point_args(point_tree))
    val, _ = point_folder.build_dataset(False, point_args(point_tree))
    assert nb_classes == 4 and train.classes == val.classes == sorted(MESHES)
    assert len(train) == 80 and len(val) == 20
    every_point = point_folder.read_points(train.reader.items[0][0])   # training: the model samples them in its step
    assert train[0][0].shape == (len(every_point), 7) and val.eval_views == 2 and val[0][0].shape == (2, 128, 7)
    assert torch.equal(val[3][0], val[3][0])  # evaluation samples are fixed


def test_class_folder_errors_are_image_folders(point_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder not found: expected '.*nowhere/train' \(one sub-folder"):
        point_folder.build_dataset(True, point_args(str(tmp_path / 'nowhere')))
    with pytest.raises(ValueError, match='has 4 class folders but --nb_classes is 40. Pass --nb_classes 4'):
        point_folder.build_dataset(False, point_args(point_tree, nb_classes=40))
    extra = tmp_path / 'extra'
    shutil.copytree(point_tree, extra)
    os.makedirs(extra / 'val' / 'teapot')
    with pytest.raises(ValueError, match=r"class folder\(s\) \['teapot'\] that the training set does not have"):
        point_folder.build_dataset(False, point_args(str(extra)))


@pytest.mark.parametrize('data_set', ['point_folder', 'audio_folder'])
def test_specs_take_their_recipes_and_refuse_image_options(data_set, capsys):
    """Each class-folder data set takes its modality's recipe defaults (not its class count) and refuses timm's
    image mixup, as MODELNET40 and SPEECHCOMMANDS do."""
    recipe = {'point_folder': 'MODELNET40', 'audio_folder': 'SPEECHCOMMANDS'}[data_set]
    args = train_main.parse_args(['--data_set', data_set, '--nb_classes', '4'])
    reference = train_main.parse_args(['--data_set', recipe])
    for option in ('lr', 'batch_size', 'smoothing', 'mixup', 'cutmix', 'aa', 'opt'):
        assert getattr(args, option) == getattr(reference, option), option
    assert args.nb_classes == 4
    with pytest.raises(SystemExit):
        train_main.parse_args(['--data_set', data_set, '--nb_classes', '4', '--mixup', '0.8'])
    assert f'--data_set {data_set} does not use --mixup' in capsys.readouterr().err


def test_unreadable_point_file_is_named_or_skipped_and_counted(point_tree, tmp_path):
    broken_tree = tmp_path / 'broken'
    shutil.copytree(point_tree, broken_tree)
    broken = broken_tree / 'val' / MESHES[0] / '000_zz_broken.txt'
    broken.write_text('1,2\n3\n')
    dataset, _ = point_folder.build_dataset(False, point_args(str(broken_tree)))
    index = [path for path, _ in dataset.reader.items].index(str(broken))
    with pytest.raises(datasets.UnreadableSampleError, match='000_zz_broken.txt'):
        dataset[index]
    dataset, _ = point_folder.build_dataset(False, point_args(str(broken_tree), skip_corrupt_images=True))
    assert dataset[index] is None and datasets.count_skipped(dataset) == 1


def write_tone(path, frequency, seconds, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    time = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * frequency * time), rate)


def test_audio_of_any_length_and_format_gets_the_recipes_features(tmp_path):
    """A 0.3 s WAV, a 3 s FLAC at 8 kHz: the Speech Commands evaluation features, padded or cut to 128 frames."""
    write_tone(str(tmp_path / 'train' / 'low' / 'a.wav'), 300, 0.3)
    write_tone(str(tmp_path / 'train' / 'high' / 'b.flac'), 2000, 3.0, rate=8000)
    write_tone(str(tmp_path / 'val' / 'high' / 'c.wav'), 2000, 1.0)
    args = argparse.Namespace(data_path=str(tmp_path), nb_classes=2, skip_corrupt_images=False, audio_mixup_prob=0.0,
                              mixup=0.0, cutmix=0.0, cutmix_minmax=None)
    train, _ = audio_folder.build_dataset(True, args)
    assert train.classes == ['high', 'low'] and [label for _, label in train.samples] == [0, 1]
    evaluation = audio_folder.AudioFiles(train.samples, train.classes, train=False)
    fbank = audio.KaldiFbank()
    for index, (path, label) in enumerate(train.samples):
        waveform = audio.read_wav(path)
        expected = audio.normalise(audio.fit_frames(fbank(waveform - waveform.mean()))).T[None]
        features, target = evaluation[index]
        assert features.shape == (1, 128, 128) and target == label
        assert torch.equal(features, expected)
    features, target = train[1]
    assert features.shape == (1, 128, 128) and target.tolist() == [0.0, 1.0]  # soft targets, as SPEECHCOMMANDS
    val, _ = audio_folder.build_dataset(False, args)
    assert val.classes == ['high', 'low'] and val.samples[0][1] == 0

    (tmp_path / 'val' / 'high' / 'd.wav').write_bytes(b'RIFF junk')
    val, _ = audio_folder.build_dataset(False, args)
    with pytest.raises(datasets.UnreadableSampleError, match="Cannot read audio file '.*d.wav'"):
        val[1]
    args.skip_corrupt_images = True
    val, _ = audio_folder.build_dataset(False, args)
    assert val[1] is None and datasets.count_skipped(val) == 1


# ---------------------------------------------------------------- through main.py

def predicted_accuracy(checkpoint, val_folder, out):
    """Top-1 accuracy (%) of tools/predict.py on a class-folder tree (the folder name is the truth)."""
    predict.main(predict.get_args_parser().parse_args(['--checkpoint', checkpoint, '--inputs', val_folder,
                                                       '--out', out, '--device', 'cpu']))
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return 100.0 * sum(row['label'] == os.path.basename(os.path.dirname(row['path'])) for row in rows) / len(rows)


def evaluated_accuracy(argv, checkpoint, count):
    """main.py --eval's top-1 (%) of the checkpoint on `count` held-out samples."""
    completed = run_main([*argv, '--eval', 'true', '--resume', checkpoint])
    assert_succeeded(completed)
    return float(re.search(rf'Accuracy of the network on {count} test images: (\S+)%', completed.stdout).group(1))


POINT_FOLDER_ARGS = [*TINY_ARGS, '--data_set', 'point_folder', '--nb_classes', str(len(MESHES)), '--batch_size', '8',
                     '--lr', '2e-3']


@pytest.mark.slow
def test_point_folder_trains_like_an_image_folder_and_predicts_like_eval(point_tree, tmp_path):
    """8 epochs: well above chance (25%) on the held-out samplings; predict's top-1 equals main.py --eval's. (The
    tiny model at lr 2e-3 without warm-up, test_point_cloud's setting, stays at chance for some seeds, on MODELNET40
    too: measured 95% at seed 0 and 25% at seed 1 there; lr 5e-4 with one warm-up epoch reached 95% here.)"""
    argv = [*POINT_FOLDER_ARGS, '--data_path', point_tree]
    output = str(tmp_path / 'run')
    assert_succeeded(run_main([*argv, '--epochs', '8', '--lr', '5e-4', '--warmup_epochs', '1', '--output_dir', output]))
    final = read_log(output)[-1]
    assert final['test_acc1'] >= 70.0, read_log(output)
    checkpoint = os.path.join(output, 'checkpoint-best.pth')
    assert torch.load(checkpoint, weights_only=True)['class_names'] == sorted(MESHES)
    # predict averages the rotations' probabilities: main.py scores them so with --pc_test_score ensemble
    evaluated = evaluated_accuracy([*argv, '--pc_test_score', 'ensemble'], checkpoint, 20)
    assert predicted_accuracy(checkpoint, os.path.join(point_tree, 'val'), str(tmp_path / 'p.csv')) == \
        pytest.approx(evaluated, abs=1e-4)


@pytest.mark.slow
def test_point_folder_resumes_bitwise_after_sigkill_with_skipped_files(point_tree, tmp_path):
    """An unreadable training file skipped and counted; killed mid-epoch; the resumed run equals an uninterrupted
    one bit for bit and logs the same skip count."""
    tree = tmp_path / 'tree'
    shutil.copytree(point_tree, tree)
    (tree / 'train' / MESHES[1] / '999_broken.npy').write_bytes(b'not numpy')
    argv = [*POINT_FOLDER_ARGS, '--data_path', str(tree), '--epochs', '1', '--drop_path', '0.1',
            '--save_ckpt_every_steps', '1', '--skip_corrupt_images', 'true']
    uninterrupted, interrupted = str(tmp_path / 'uninterrupted'), str(tmp_path / 'interrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step3.pth'])
    assert_same_training_state(os.path.join(interrupted, 'checkpoint-0.pth'),
                               os.path.join(uninterrupted, 'checkpoint-0.pth'))
    assert read_log(uninterrupted)[0]['train_skipped_images'] == 1
    assert read_log(interrupted)[0]['test_acc1'] == read_log(uninterrupted)[0]['test_acc1']


@pytest.mark.slow
def test_skip_count_sums_the_ranks_and_eval_prints_the_evaluation_sets(point_tree, tmp_path):
    """Two ranks skip the unreadable training files of their own parts: log.txt counts all of them. --eval prints
    the evaluation set's count, summed over --dist_eval's parts."""
    tree = tmp_path / 'tree'
    shutil.copytree(point_tree, tree)
    training_files = sum(len(files) for _, _, files in os.walk(tree / 'train'))
    broken = 2 + (training_files % 2)  # an even total, so that neither rank's part is padded with a repeat
    for index in range(broken):
        (tree / 'train' / MESHES[index % len(MESHES)] / f'99{index}_broken.npy').write_bytes(b'not numpy')
    (tree / 'val' / MESHES[0] / '999_broken.npy').write_bytes(b'not numpy')
    argv = [*POINT_FOLDER_ARGS, '--data_path', str(tree), '--skip_corrupt_images', 'true']
    output = str(tmp_path / 'run')
    assert_succeeded(run_main([*argv, '--epochs', '1', '--output_dir', output], nproc=2))
    assert read_log(output)[0]['train_skipped_images'] == broken
    evaluated = run_main([*argv, '--eval', 'true', '--resume', os.path.join(output, 'checkpoint-0.pth')], nproc=2)
    assert_succeeded(evaluated)
    assert '--skip_corrupt: 1 unreadable evaluation samples skipped' in evaluated.stdout, evaluated.stdout[-3000:]


@pytest.fixture(scope='module')
def spoken_word_tree(speech_tools, tmp_path_factory):
    """The synthesised Speech Commands words as class folders: training voices in train/, the others in val/."""
    layout = build_spoken_commands(str(tmp_path_factory.mktemp('spoken')))
    held_out = set()
    for name in audio.LIST_FILES.values():
        with open(os.path.join(layout, name)) as f:
            held_out.update(line.strip() for line in f if line.strip())
    root = tmp_path_factory.mktemp('spoken_folders')
    for word in WORDS:
        for name in sorted(os.listdir(os.path.join(layout, word))):
            split = 'val' if f'{word}/{name}' in held_out else 'train'
            os.makedirs(root / split / word, exist_ok=True)
            shutil.copy(os.path.join(layout, word, name), root / split / word / name)
    return str(root)


@pytest.mark.slow
def test_audio_folder_recognises_unheard_voices_and_predicts_like_eval(spoken_word_tree, tmp_path):
    argv = ['--config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'audio', 'quickstart_speech.yaml'),
            '--data_set', 'audio_folder', '--data_path', spoken_word_tree, '--nb_classes', str(len(WORDS)),
            '--num_workers', '0']
    output = str(tmp_path / 'run')
    assert_succeeded(run_main([*argv, '--output_dir', output], timeout=900))
    checkpoint = os.path.join(output, 'checkpoint-best.pth')
    held_out = len(WORDS) * len(ESPEAK_VOICES + list(FLITE_VOICES)) * 2 // 5
    evaluated = evaluated_accuracy(argv, checkpoint, held_out)
    assert evaluated >= 2 * 100.0 / len(WORDS)
    assert torch.load(checkpoint, weights_only=True)['class_names'] == sorted(WORDS)
    assert predicted_accuracy(checkpoint, os.path.join(spoken_word_tree, 'val'), str(tmp_path / 'p.csv')) == \
        pytest.approx(evaluated, abs=1e-4)
