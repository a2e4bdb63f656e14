"""Tar shards (shards.py, tools/make_shards.py, --data_format shards): conversion, equality with the image
folder, resumable conversion, error messages, and (slow) training, kill/resume and --dist_eval from shards."""
import argparse
import filecmp
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets

import datasets
import shards
from tools import make_shards
from train_helpers import (BATCH_INDEPENDENT_UNIREPLKNET, REPO_ROOT, TINY_UNIREPLKNET, assert_bitwise_equal,
                           assert_same_training_state, assert_succeeded, load_checkpoint, run_killed_after_each,
                           read_log, run_main, subprocess_env)

# Photos shipped with scikit-image, one class each, cut into 16x16 JPEG crops at random places.
PHOTOS = ('astronaut', 'coffee', 'chelsea')
CROP = 16
TRAIN_PER_CLASS, VAL_PER_CLASS = 64, 21   # 192 training images; 63 validation images (odd: uneven over 2 ranks)
SHARD_SIZE = 25                           # several shards per split, the last one partly filled


def write_photo_crops(folder, per_class, rng):
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for index in range(per_class):
            top = rng.integers(0, photo.shape[0] - CROP)
            left = rng.integers(0, photo.shape[1] - CROP)
            Image.fromarray(photo[top:top + CROP, left:left + CROP]).save(
                os.path.join(folder, name, f'{index:03d}.jpg'), quality=90)


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """IMNET layout: root/train/<photo>/NNN.jpg and root/val/<photo>/NNN.jpg."""
    root = str(tmp_path_factory.mktemp('photos'))
    rng = np.random.default_rng(0)
    write_photo_crops(os.path.join(root, 'train'), TRAIN_PER_CLASS, rng)
    write_photo_crops(os.path.join(root, 'val'), VAL_PER_CLASS, rng)
    return root


def convert(src, dst, *extra):
    make_shards.main(['--src', str(src), '--dst', str(dst), '--shard_size', str(SHARD_SIZE), '--workers', '2',
                      *extra])


@pytest.fixture(scope='module')
def photo_shards(photo_folder, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp('shards'))
    convert(photo_folder, dst)
    return dst


def data_args(**overrides):
    values = dict(data_set='IMNET', data_format='shards', data_path='', eval_data_path=None,
                  nb_classes=len(PHOTOS), input_size=CROP, imagenet_default_mean_and_std=True, color_jitter=0.4,
                  aa='rand-m9-mstd0.5-inc1', train_interpolation='bicubic', reprob=0.25, remode='pixel', recount=1,
                  crop_pct=None, skip_corrupt_images=False, seed=0)
    values.update(overrides)
    return argparse.Namespace(**values)


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def same_files(dir_a, dir_b, ignore=()):
    """Names and bytes of every file equal (recursively), except the names in `ignore`."""
    comparison = filecmp.dircmp(dir_a, dir_b, ignore=list(ignore))
    if comparison.left_only or comparison.right_only:
        return False
    _, mismatch, errors = filecmp.cmpfiles(dir_a, dir_b, comparison.common_files, shallow=False)
    return not mismatch and not errors and all(
        same_files(os.path.join(dir_a, sub), os.path.join(dir_b, sub), ignore) for sub in comparison.common_dirs)


def assert_same_conversion(dst_a, dst_b):
    """Byte-equal shards and indexes; equal manifests but for the rebuild command, which names the --dst."""
    assert same_files(dst_a, dst_b, ignore=[shards.MANIFEST_NAME])
    for split in ('train', 'val'):
        manifest_a, manifest_b = (shards.read_manifest(os.path.join(dst, split)) for dst in (dst_a, dst_b))
        assert manifest_a.pop('rebuild_command').replace(dst_a, dst_b) == manifest_b.pop('rebuild_command')
        assert manifest_a == manifest_b


# ---------------------------------------------------------------- conversion and reading

def test_shards_hold_the_image_folder_samples_in_its_order(photo_folder, photo_shards):
    for split in ('train', 'val'):
        folder = tv_datasets.ImageFolder(os.path.join(photo_folder, split))
        packed = shards.ShardDataset(os.path.join(photo_shards, split))
        assert packed.classes == folder.classes == sorted(PHOTOS)
        assert len(packed) == len(folder) and packed.targets == folder.targets
        assert len(packed.manifest['shards']) == -(-len(folder) // SHARD_SIZE)
        for index, (path, target) in enumerate(folder.samples):
            with open(path, 'rb') as f:
                assert packed.read_bytes(index) == f.read()
            image, label = packed[index]
            assert label == target
            assert np.array_equal(np.asarray(image), np.asarray(folder[index][0]))


def test_shards_are_plain_tar_files_of_the_original_tree(photo_folder, photo_shards, tmp_path):
    """`tar xf` of every shard gives the ImageFolder tree back (read here with Python's tarfile)."""
    import tarfile
    for shard in shards.read_manifest(os.path.join(photo_shards, 'val'))['shards']:
        with tarfile.open(os.path.join(photo_shards, 'val', shard['name'])) as tar:
            tar.extractall(tmp_path / 'val', filter='data')
    assert same_files(os.path.join(photo_folder, 'val'), tmp_path / 'val')


def test_build_dataset_reads_shards_for_imnet_and_flat_image_folders(photo_folder, photo_shards, tmp_path):
    train, classes = datasets.build_dataset(True, data_args(data_path=photo_shards))
    assert classes == len(PHOTOS) and isinstance(train, datasets.SeededAugmentation)
    assert isinstance(train.dataset, shards.ShardDataset) and len(train) == len(PHOTOS) * TRAIN_PER_CLASS
    # The 22K layout: class folders straight under --src, evaluation set converted separately.
    flat_train, flat_val = str(tmp_path / 'flat_train'), str(tmp_path / 'flat_val')
    convert(os.path.join(photo_folder, 'train'), flat_train)
    convert(os.path.join(photo_folder, 'val'), flat_val)
    assert os.path.isfile(os.path.join(flat_train, shards.MANIFEST_NAME))
    args = data_args(data_set='image_folder', data_path=flat_train, eval_data_path=flat_val)
    val, _ = datasets.build_dataset(False, args)
    assert len(val) == len(PHOTOS) * VAL_PER_CLASS
    assert torch.equal(val[5][0], datasets.build_dataset(False, data_args(data_path=photo_shards))[0][5][0])


def test_workers_open_their_own_files_and_open_files_stay_bounded(photo_shards, monkeypatch):
    dataset = shards.ShardDataset(os.path.join(photo_shards, 'train'), transform=np.asarray)
    expected = [dataset[index] for index in range(len(dataset))]   # the main process now holds open shards
    assert dataset._open_shards and not pickle.loads(pickle.dumps(dataset))._open_shards
    loaded = [sample for batch in DataLoader(dataset, batch_size=None, num_workers=2) for sample in [batch]]
    for (image, label), (expected_image, expected_label) in zip(loaded, expected):
        assert int(label) == expected_label and np.array_equal(np.asarray(image), expected_image)
    monkeypatch.setattr(shards, 'MAX_OPEN_SHARDS', 2)
    bounded = shards.ShardDataset(os.path.join(photo_shards, 'train'))
    for index in range(0, len(bounded), SHARD_SIZE):
        bounded.read_bytes(index)
        assert len(bounded._open_shards) <= 2


def test_unreadable_files_are_listed_and_skipped(photo_folder, tmp_path, capsys):
    src = copy_tree(os.path.join(photo_folder, 'val'), tmp_path / 'src')
    with open(os.path.join(src, 'coffee', '000.jpg'), 'rb') as f:
        truncated = f.read()[:200]
    with open(os.path.join(src, 'coffee', 'truncated.jpg'), 'wb') as f:
        f.write(truncated)
    with open(os.path.join(src, 'chelsea', 'not_an_image.png'), 'w') as f:
        f.write('hello')
    convert(src, tmp_path / 'dst')
    out = capsys.readouterr().out
    assert f'{len(PHOTOS) * VAL_PER_CLASS} images, {len(PHOTOS)} classes' in out
    assert '2 unreadable files skipped' in out
    assert 'coffee/truncated.jpg' in out and 'chelsea/not_an_image.png' in out
    manifest = shards.read_manifest(str(tmp_path / 'dst'))
    assert sorted(manifest['unreadable']) == ['chelsea/not_an_image.png', 'coffee/truncated.jpg']
    assert len(shards.ShardDataset(str(tmp_path / 'dst'))) == len(PHOTOS) * VAL_PER_CLASS


def test_an_interrupted_conversion_resumes_to_the_same_shards(photo_folder, photo_shards, tmp_path, capsys):
    """Whatever an interruption leaves (a half-written temporary shard, a truncated or missing shard, no
    manifest yet), running the command again gives the uninterrupted conversion's bytes."""
    dst = copy_tree(photo_shards, tmp_path / 'dst')
    train = os.path.join(dst, 'train')
    os.remove(os.path.join(train, shards.MANIFEST_NAME))
    os.remove(os.path.join(train, 'shard-000003.tar'))
    with open(os.path.join(train, 'shard-000001.tar'), 'r+b') as f:
        f.truncate(1000)
    with open(os.path.join(train, 'shard-000006.tar' + make_shards.TMP_MARKER + '123'), 'wb') as f:
        f.write(b'half')
    capsys.readouterr()
    convert(photo_folder, dst)
    assert '2 shards written, 9 kept from an earlier run (verified)' in capsys.readouterr().out
    assert_same_conversion(photo_shards, dst)


@pytest.mark.slow
def test_a_killed_conversion_resumes_to_the_same_shards(photo_folder, photo_shards, tmp_path):
    def command(dst, workers):
        return [sys.executable, os.path.join(REPO_ROOT, 'tools', 'make_shards.py'), '--src', photo_folder,
                '--dst', dst, '--shard_size', '5', '--workers', str(workers)]

    dst = str(tmp_path / 'dst')
    process = subprocess.Popen(command(dst, 1), cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    train = os.path.join(dst, 'train')
    deadline = time.time() + 120
    while not (os.path.isdir(train) and any(name.endswith('.json') for name in os.listdir(train))):
        assert process.poll() is None and time.time() < deadline, 'the conversion ended before it was killed'
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.isfile(os.path.join(train, shards.MANIFEST_NAME))
    subprocess.run(command(dst, 1), cwd=REPO_ROOT, env=subprocess_env(), check=True, capture_output=True)
    uninterrupted = str(tmp_path / 'uninterrupted')
    subprocess.run(command(uninterrupted, 2), cwd=REPO_ROOT, env=subprocess_env(), check=True, capture_output=True)
    assert_same_conversion(uninterrupted, dst)


# ---------------------------------------------------------------- errors

def test_missing_truncated_and_mismatched_shards_name_the_shard_and_the_rebuild_command(
        photo_folder, photo_shards, tmp_path):
    dst = copy_tree(photo_shards, tmp_path / 'dst')
    train = os.path.join(dst, 'train')
    rebuild = f"python tools/make_shards.py --src {photo_folder} --dst {photo_shards} --shard_size {SHARD_SIZE}"

    os.rename(os.path.join(train, 'shard-000002.tar'), os.path.join(train, 'moved.tar'))
    with pytest.raises(shards.ShardError, match=re.escape("shard-000002.tar' is missing")) as missing:
        shards.ShardDataset(train)
    assert rebuild in str(missing.value)
    os.rename(os.path.join(train, 'moved.tar'), os.path.join(train, 'shard-000002.tar'))

    with open(os.path.join(train, 'shard-000004.tar'), 'r+b') as f:
        f.truncate(4096)
    with pytest.raises(shards.ShardError, match=r"shard-000004.tar' has 4096 bytes .* truncated") as truncated:
        shards.ShardDataset(train)
    assert rebuild in str(truncated.value)
    shutil.copy(os.path.join(photo_shards, 'train', 'shard-000004.tar'), os.path.join(train, 'shard-000004.tar'))

    index = np.load(os.path.join(train, shards.INDEX_NAME))
    index['offset'][30] += shards.TAR_BLOCK_SIZE   # sample 30 (shard 1) now points into its own data
    np.save(os.path.join(train, shards.INDEX_NAME), index)
    dataset = shards.ShardDataset(train)
    dataset[29]
    with pytest.raises(shards.ShardError, match=r"index does not match shard .*shard-000001.tar'") as mismatch:
        dataset[30]
    assert rebuild in str(mismatch.value)

    with open(os.path.join(train, 'shard-000007.tar'), 'r+b') as f:   # truncated while the data set is open
        f.truncate(2048)
    with pytest.raises(shards.ShardError, match=r"shard-000007.tar' ends before sample 180 .* truncated"):
        dataset[180]


def test_verify_reports_a_changed_shard(photo_folder, photo_shards, tmp_path, capsys):
    dst = copy_tree(photo_shards, tmp_path / 'dst')
    shard = os.path.join(dst, 'val', 'shard-000000.tar')
    with open(shard, 'r+b') as f:
        f.seek(shards.TAR_BLOCK_SIZE + 100)
        f.write(b'\xff\x00\xff')
    with pytest.raises(SystemExit, match='1 problems found; rebuild with: python tools/make_shards.py'):
        convert(photo_folder, dst, '--verify')
    assert 'val/shard-000000.tar: sha256 differs' in capsys.readouterr().out


def test_class_count_and_data_set_errors(photo_shards, tmp_path):
    with pytest.raises(ValueError, match=r"holds shards of 3 classes but --nb_classes is 1000. Pass --nb_classes 3"):
        datasets.build_dataset(True, data_args(data_path=photo_shards, nb_classes=1000))
    with pytest.raises(ValueError, match='--data_set DIGITS is not one: pass --data_format folder'):
        datasets.build_dataset(True, data_args(data_set='DIGITS'))
    with pytest.raises(shards.ShardError, match=r"is not a shard directory: 'shards.json' is missing .*make_shards"):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path)))


def test_the_slurm_launcher_forwards_the_data_format():
    import run_with_submitit
    _, main_args = run_with_submitit.parse_args(
        ['--nodes', '2', '--ngpus', '8', '--data_set', 'image_folder', '--data_format', 'shards', '--data_path',
         '/shards/in22k', '--nb_classes', '21841', '--job_dir', '/shared/runs/%j'])
    assert (main_args.data_format, main_args.data_path) == ('shards', '/shards/in22k')


# ---------------------------------------------------------------- training from shards (main.py subprocesses)

def train_args(data_format, data_root):
    return ['--data_set', 'IMNET', '--data_format', data_format, '--data_path', data_root,
            '--nb_classes', str(len(PHOTOS)), '--input_size', str(CROP), '--device', 'cpu', '--seed', '0']


@pytest.fixture(scope='module')
def folder_and_shard_runs(photo_folder, photo_shards, tmp_path_factory):
    """One epoch (12 updates) with the default augmentation, from the folder and from the shards."""
    base = tmp_path_factory.mktemp('runs')
    runs = {}
    for data_format, root in (('folder', photo_folder), ('shards', photo_shards)):
        output_dir = str(base / data_format)
        argv = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET, '--batch_size', '8',
                '--update_freq', '2', '--epochs', '1', '--warmup_epochs', '0', '--num_workers', '1',
                *train_args(data_format, root), '--output_dir', output_dir]
        assert_succeeded(run_main(argv))
        runs[data_format] = output_dir
    return runs


@pytest.mark.slow
def test_training_from_shards_equals_training_from_the_folder(folder_and_shard_runs):
    from_folder = load_checkpoint(os.path.join(folder_and_shard_runs['folder'], 'checkpoint-0.pth'))
    from_shards = load_checkpoint(os.path.join(folder_and_shard_runs['shards'], 'checkpoint-0.pth'))
    assert from_shards['optimizer']['state'][0]['step'] == 12
    assert_bitwise_equal(from_shards['model'], from_folder['model'])
    assert read_log(folder_and_shard_runs['shards'])[0]['test_num_images'] == len(PHOTOS) * VAL_PER_CLASS


@pytest.mark.slow
def test_distributed_evaluation_from_shards_equals_one_process(folder_and_shard_runs, photo_shards):
    """63 validation images over 2 gloo ranks give the numbers the 1-process run logged for the same weights."""
    single = read_log(folder_and_shard_runs['shards'])[0]
    checkpoint = os.path.join(folder_and_shard_runs['shards'], 'checkpoint-0.pth')
    argv = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET, '--batch_size', '8',
            '--eval', 'true', '--resume', checkpoint, '--num_workers', '0', *train_args('shards', photo_shards)]
    completed = run_main(argv, nproc=2)
    assert_succeeded(completed)
    assert (f"Accuracy of the network on {len(PHOTOS) * VAL_PER_CLASS} test images: {single['test_acc1']:.5f}%"
            in completed.stdout)
    loss = float(re.search(r'\* Acc@1 .*? loss (\S+)', completed.stdout).group(1))
    assert loss == pytest.approx(single['test_loss'], abs=1e-3)


@pytest.mark.slow
def test_killed_run_resumed_from_shards_is_bitwise_equal(photo_shards, tmp_path):
    argv = ['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--batch_size', '8',
            '--update_freq', '2', '--epochs', '1', '--warmup_steps', '2', '--mixup', '0.3', '--cutmix', '0.3',
            '--drop_path', '0.1', '--save_ckpt_every_steps', '1', '--num_workers', '1',
            *train_args('shards', photo_shards)]
    uninterrupted = str(tmp_path / 'uninterrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))

    interrupted = str(tmp_path / 'interrupted')
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step5.pth'])  # of 12 steps
    assert_same_training_state(os.path.join(uninterrupted, 'checkpoint-0.pth'),
                               os.path.join(interrupted, 'checkpoint-0.pth'))
    assert read_log(interrupted)[0]['test_acc1'] == read_log(uninterrupted)[0]['test_acc1']


def test_the_benchmark_runs_at_a_tiny_size(tmp_path, capsys):
    from benchmarks import bench_shards
    bench_shards.main(['--root', str(tmp_path), '--images', '300', '--read_images', '64', '--workers', '0',
                       '--convert_workers', '1', '--formats', 'folder', 'shards'])
    out = capsys.readouterr().out
    assert re.search(r'\| shards \| \d+ \| \d+ \|', out)
    assert re.search(r'\| folder \| 0 \| \d+ \| \d+ \| \d+ \| \d+ \|', out)
    assert re.search(r'\| shards \| 0 \| \d+ \| \d+ \| \d+ \| \d+ \|', out)
