"""datasets.py: every --data_set path, error messages, unreadable images, seeded augmentation, transforms."""
import argparse
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import InterpolationMode

import datasets
from datasets import build_dataset, build_transform, collate_skipping_corrupt, count_skipped
from train_helpers import CreatesFileWhenUnpickled


def make_args(**overrides):
    """The dataset-related options of main.py with their release defaults."""
    values = dict(
        data_set='IMNET', data_path='', eval_data_path=None, nb_classes=1000, input_size=224,
        imagenet_default_mean_and_std=True, color_jitter=0.4, aa='rand-m9-mstd0.5-inc1',
        train_interpolation='bicubic', reprob=0.25, remode='pixel', recount=1, crop_pct=None,
        skip_corrupt_images=False, seed=0)
    values.update(overrides)
    return argparse.Namespace(**values)


def write_jpegs(folder, classes, per_class, size=40):
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f'{i}.jpg', quality=90)


@pytest.fixture
def imagenet_root(tmp_path):
    write_jpegs(tmp_path / 'train', ['cat', 'dog', 'eel'], per_class=2)
    write_jpegs(tmp_path / 'val', ['cat', 'dog', 'eel'], per_class=1)
    return tmp_path


# --- each data_set path builds -------------------------------------------------------------------

def test_digits_builds_a_deterministic_split_of_rgb_images():
    train, nb_classes = build_dataset(True, make_args(data_set='DIGITS', input_size=32))
    val, _ = build_dataset(False, make_args(data_set='DIGITS', input_size=32))
    assert nb_classes == 10
    assert (len(train), len(val)) == (1437, 360)
    image, label = val[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    # An 8x8 digit enlarged 4x: every 4x4 block of the unnormalised image is constant.
    raw = datasets.Digits(train=False, transform=transforms.PILToTensor())[0][0]
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2), raw)
    # Same split every time.
    assert datasets.Digits(train=False, transform=None).targets == datasets.Digits(train=False, transform=None).targets


def test_imnet_reads_train_and_val_subfolders(imagenet_root):
    args = make_args(data_path=str(imagenet_root), nb_classes=3, input_size=48)
    train, nb_classes = build_dataset(True, args)
    val, _ = build_dataset(False, args)
    assert nb_classes == 3 and train.classes == ['cat', 'dog', 'eel']
    assert (len(train), len(val)) == (6, 3)
    assert train[0][0].shape == val[2][0].shape == (3, 48, 48)
    assert val[2][1] == 2


def test_image_folder_uses_data_path_and_eval_data_path(imagenet_root):
    args = make_args(data_set='image_folder', data_path=str(imagenet_root / 'train'),
                     eval_data_path=str(imagenet_root / 'val'), nb_classes=3, input_size=48)
    assert len(build_dataset(True, args)[0]) == 6
    assert len(build_dataset(False, args)[0]) == 3
    args.eval_data_path = None
    with pytest.raises(ValueError, match='--eval_data_path'):
        build_dataset(False, args)


def test_class_count_mismatch_names_the_value_to_pass(imagenet_root):
    args = make_args(data_set='image_folder', data_path=str(imagenet_root / 'train'), nb_classes=21841)
    with pytest.raises(ValueError, match=r'has 3 class folders but --nb_classes is 21841\. Pass --nb_classes 3'):
        build_dataset(True, args)


def test_missing_folder_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'train')):
        build_dataset(True, make_args(data_path=str(tmp_path)))


def test_unknown_data_set_lists_the_choices():
    with pytest.raises(ValueError, match='IMNET, image_folder, CIFAR, DIGITS'):
        build_dataset(True, make_args(data_set='MNIST'))


def test_cifar_without_local_copy_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'cifar-100-python')) as error:
        build_dataset(True, make_args(data_set='CIFAR', data_path=str(tmp_path)))
    assert 'never downloads' in str(error.value)


def test_local_cifar100_pickle_copy_loads(tmp_path):
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('test', 2)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        with open(folder / split, 'wb') as f:
            pickle.dump({b'data': data, b'fine_labels': list(range(count))}, f)
    with open(folder / 'meta', 'wb') as f:
        pickle.dump({b'fine_label_names': [f'class{i}'.encode() for i in range(100)]}, f)
    args = make_args(data_set='CIFAR', data_path=str(tmp_path), input_size=32)
    train, nb_classes = build_dataset(True, args)
    val, _ = build_dataset(False, args)
    assert nb_classes == 100 and (len(train), len(val)) == (4, 2)
    assert train[3][0].shape == (3, 32, 32) and train[3][1] == 3
    # Pixels are stored channel-planar (R plane, G plane, B plane), row-major.
    raw = datasets.LocalCIFAR100(str(folder), False, transforms.PILToTensor())[1][0]
    with open(folder / 'test', 'rb') as f:
        expected = pickle.load(f)[b'data'][1].reshape(3, 32, 32)
    assert torch.equal(raw, torch.from_numpy(expected))


# --- unreadable images ----------------------------------------------------------------------------

@pytest.fixture
def folder_with_bad_images(tmp_path):
    write_jpegs(tmp_path, ['a', 'b'], per_class=3)
    (tmp_path / 'a' / '1.jpg').write_bytes(b'this is not a jpeg')
    good = (tmp_path / 'b' / '0.jpg').read_bytes()
    (tmp_path / 'b' / '2.jpg').write_bytes(good[:len(good) // 2])   # truncated
    return tmp_path


def test_unreadable_image_stops_with_its_path_by_default(folder_with_bad_images):
    args = make_args(data_set='image_folder', data_path=str(folder_with_bad_images), nb_classes=2, input_size=32)
    dataset, _ = build_dataset(True, args)
    with pytest.raises(RuntimeError, match=r"a/1\.jpg.*--skip_corrupt true"):
        dataset[1]
    with pytest.raises(RuntimeError, match=r"b/2\.jpg"):
        dataset[5]


def test_skip_flag_skips_and_counts_across_workers(folder_with_bad_images):
    args = make_args(data_set='image_folder', data_path=str(folder_with_bad_images), nb_classes=2,
                     input_size=32, skip_corrupt_images=True)
    dataset, _ = build_dataset(True, args)
    assert dataset[1] is None and count_skipped(dataset) == 1
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_skipping_corrupt)
    batch_sizes = [len(targets) for _, targets in loader]
    assert batch_sizes == [2, 2]            # one bad image in each batch of 3
    assert count_skipped(dataset) == 3      # 1 above + 2 counted inside the worker processes


def test_collate_keeps_batches_even_for_mixup():
    sample = (torch.zeros(3, 2, 2), 0)
    assert len(collate_skipping_corrupt([sample, None, sample, sample])[1]) == 2
    assert len(collate_skipping_corrupt([sample, None, sample])[1]) == 2
    with pytest.raises(RuntimeError, match='unreadable'):
        collate_skipping_corrupt([None, None])


# --- seeded augmentation --------------------------------------------------------------------------

def digits_train(seed=0):
    # Strong augmentation so that different seeds visibly differ.
    return build_dataset(True, make_args(data_set='DIGITS', input_size=32, seed=seed, reprob=1.0))[0]


def test_same_seed_epoch_index_gives_same_sample_in_fresh_datasets():
    first, second = digits_train(), digits_train()
    first.set_epoch(3)
    second.set_epoch(3)
    random.random(), np.random.rand(), torch.rand(1)   # global state must not matter
    assert torch.equal(first[7][0], second[7][0])
    second.set_epoch(4)
    assert not torch.equal(first[7][0], second[7][0])
    other_seed = digits_train(seed=1)
    other_seed.set_epoch(3)
    assert not torch.equal(first[7][0], other_seed[7][0])


def test_augmentation_is_independent_of_worker_count():
    def batches(num_workers):
        dataset = digits_train()
        dataset.set_epoch(2)
        loader = DataLoader(dataset, batch_size=8, num_workers=num_workers, sampler=range(24))
        return torch.cat([images for images, _ in loader])

    assert torch.equal(batches(0), batches(2))


def test_loading_a_sample_leaves_global_random_state_alone():
    dataset = digits_train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dataset[0]
    assert torch.equal(torch.rand(3), expected)


# --- transforms (facts C.8) -----------------------------------------------------------------------

def test_train_transform_is_timm_create_transform():
    steps = build_transform(True, make_args()).transforms
    crop = steps[0]
    assert isinstance(crop, RandomResizedCropAndInterpolation)
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and crop.interpolation == InterpolationMode.BICUBIC
    assert isinstance(steps[1], transforms.RandomHorizontalFlip)
    assert type(steps[2]).__name__ == 'RandAugment'
    normalize, erasing = steps[-2], steps[-1]
    assert torch.allclose(normalize.mean, torch.tensor([0.485, 0.456, 0.406]))
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.25, 'pixel', 1)


def test_small_input_train_transform_pads_and_crops():
    crop = build_transform(True, make_args(input_size=32, aa='none')).transforms[0]
    assert isinstance(crop, transforms.RandomCrop) and crop.size == (32, 32) and crop.padding == 4


def test_eval_transform_resizes_by_crop_pct_then_center_crops():
    resize, crop = build_transform(False, make_args()).transforms[:2]
    assert resize.size == 256 and resize.interpolation == InterpolationMode.BICUBIC
    assert crop.size == (224, 224)
    assert build_transform(False, make_args(crop_pct=0.95)).transforms[0].size == int(224 / 0.95)


def test_eval_transform_at_384_warps_without_crop():
    steps = build_transform(False, make_args(input_size=384, crop_pct=0.875)).transforms
    assert steps[0].size == (384, 384) and steps[0].interpolation == InterpolationMode.BICUBIC
    assert [type(s) for s in steps[1:]] == [transforms.ToTensor, transforms.Normalize]


def test_eval_transform_for_small_inputs_has_no_resize():
    steps = build_transform(False, make_args(input_size=32)).transforms
    assert [type(s) for s in steps] == [transforms.ToTensor, transforms.Normalize]


def test_inception_mean_std_switch():
    for is_train in (True, False):
        normalize = [s for s in build_transform(is_train, make_args(imagenet_default_mean_and_std=False)).transforms
                     if isinstance(s, transforms.Normalize)][0]
        assert list(map(float, normalize.mean)) == [0.5, 0.5, 0.5]
        assert list(map(float, normalize.std)) == [0.5, 0.5, 0.5]


def test_randaugment_posterize_at_full_magnitude_works():
    """The default --aa (rand-m9-mstd0.5-inc1) can ask for posterize with 0 bits kept; Pillow 13 raises on
    that, which crashed training at random. requirements.txt pins Pillow < 13, where it gives black, as in
    the release."""
    from timm.data.auto_augment import posterize
    image = Image.new('RGB', (8, 8), (200, 100, 50))
    assert posterize(image, 0).getpixel((0, 0)) == (0, 0, 0)


def write_cifar_copy(folder, meta):
    """cifar-100-python/{train,test,meta} as the python version holds them: train/test pickled at protocol 2 with the
    numpy 1.x module names of the official (Python 2) files, meta = the given object."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('test', 2)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        content = pickle.dumps({b'data': data, b'fine_labels': list(range(count))}, protocol=2)
        (folder / split).write_bytes(content.replace(b'numpy._core.multiarray', b'numpy.core.multiarray'))
    (folder / 'meta').write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar_pickles_are_read_without_running_their_code(tmp_path):
    marker = tmp_path / 'code_ran'
    hostile_meta = {b'fine_label_names': [CreatesFileWhenUnpickled(str(marker))]}
    pickle.loads(pickle.dumps(hostile_meta, protocol=2))   # an unrestricted reader runs it: really hostile
    assert marker.exists()
    marker.unlink()

    write_cifar_copy(tmp_path / 'cifar-100-python', hostile_meta)
    args = make_args(data_set='CIFAR', data_path=str(tmp_path), input_size=32)
    with pytest.raises(datasets.UnsafeDataFileError, match=r"cifar-100-python/meta refers to the Python object "
                                                           r"(io|builtins)\.open.*refused"):
        build_dataset(True, args)
    assert not marker.exists()

    (tmp_path / 'cifar-100-python' / 'meta').write_bytes(
        pickle.dumps({b'fine_label_names': [f'class{i}'.encode() for i in range(100)]}, protocol=2))
    train, nb_classes = build_dataset(True, args)   # the official files' numpy 1.x names and protocol 2 are admitted
    assert nb_classes == 100 and len(train) == 4
    (tmp_path / 'cifar-100-python' / 'test').write_bytes(pickle.dumps({b'data': np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"cifar-100-python/test is not a CIFAR-100 python-version file: it has no "
                                         r"fine_labels"):
        build_dataset(False, args)
    (tmp_path / 'cifar-100-python' / 'test').write_bytes(pickle.dumps({b'data': 1})[:-5])
    with pytest.raises(ValueError, match=r"cifar-100-python/test is not a readable pickle .* truncated or corrupt"):
        build_dataset(False, args)
