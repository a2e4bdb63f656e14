"""Datasets and transforms for ImageNet-1K/22K, CIFAR-100 and the bundled 8x8 digits.

`build_dataset(is_train, args) -> (dataset, nb_classes)` reads `args.data_set` with the builder of its spec
(specs.py; the image data sets' specs are `SPECS` at the end of this file, the others' in modalities/):

* 'IMNET'        -- ImageFolder(args.data_path/train) or ImageFolder(args.data_path/val).
* 'image_folder' -- ImageFolder(args.data_path) for training, ImageFolder(args.eval_data_path) for
                    evaluation (ImageNet-22K: 21841 class folders, pass --nb_classes 21841).
* 'CIFAR'        -- CIFAR-100 from a local copy of the "python version"
                    (args.data_path/cifar-100-python/{train,test,meta}). Never downloads.
* 'DIGITS'       -- scikit-learn's bundled 8x8 handwritten digits (10 classes, 1797 images, no
                    download), split 80/20 deterministically and served as 32x32 RGB PIL images.

With --data_format shards, IMNET and image_folder read the same paths as tar shards written by
tools/make_shards.py from those folders (shards.py): same samples, order and class indices.

For the folder datasets, --nb_classes must equal the number of class folders (checked, with an
error that says which number to pass). CIFAR and DIGITS have a fixed class count (100, 10).

Transforms (`build_transform`) follow the release: timm `create_transform` for training
(RandAugment string --aa, color jitter, random erasing, --train_interpolation); for evaluation a
bicubic resize of the short side to input_size / crop_pct (crop_pct defaults to 224/256) then a
center crop, except that input_size >= 384 resizes (warps) straight to input_size x input_size
and ignores crop_pct. Inputs of 32 pixels or less use RandomCrop(input_size, padding=4) for
training and no resize at all for evaluation. --imagenet_default_mean_and_std false switches to
the inception mean/std (0.5, 0.5, 0.5).

Unreadable samples: by default reading one raises an error naming the file. With
`args.skip_corrupt_images` (main.py: --skip_corrupt, alias --skip_corrupt_images) the sample comes back as None,
is reported on stderr and counted; build the DataLoader with `collate_fn=collate_skipping_corrupt` to drop it, and
read the number skipped so far (summed over DataLoader workers) with `count_skipped(dataset)`. The data sets of
the other modalities (modalities/) do the same through `SkipsUnreadable`.

Data files never run code: the CIFAR-100 pickles (and the time-series timestamp files, modalities/time_series.py)
are read by `RestrictedUnpickler`, which admits only the types those formats hold.

Reproducible augmentation: the training dataset is wrapped in `SeededAugmentation`, which seeds
python `random`, numpy and torch from (args.seed, epoch, sample index) around every sample. Call
`dataset.set_epoch(epoch)` before creating each epoch's DataLoader iterator (workers must not be
persistent, so that they pick up the new epoch). The same sample index then gets the same
augmentation whatever the number of workers or processes, and after a resume. The global random
states of the calling process are restored after each sample, so loading data in the main
process (num_workers=0) does not disturb the training loop's random numbers.
"""
import contextlib
import multiprocessing
import os
import pickle
import random
import sys

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.constants import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                                 IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)
from torch.utils.data import Dataset, default_collate
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

import shards
import specs
import utils

DATA_SETS_READ_FROM_DATA_PATH = ('IMNET', 'image_folder', 'CIFAR')
FOLDER_DATA_SETS = ('IMNET', 'image_folder')   # also readable as shards (--data_format shards)
DIGITS_IMAGE_SIZE = 32   # the 8x8 digits are enlarged 4x so the <=32-pixel transform path applies
DIGITS_VAL_FRACTION = 0.2
DEFAULT_CROP_PCT = 224 / 256


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def normalization(args):
    """(mean, std): timm's ImageNet defaults, or inception 0.5/0.5 when the flag is false."""
    if args.imagenet_default_mean_and_std:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD


def build_transform(is_train, args):
    mean, std = normalization(args)
    is_small_input = args.input_size <= 32

    if is_train:
        # '--aa none' turns RandAugment off (timm itself only accepts None for that).
        auto_augment = None if str(args.aa).lower() in ('', 'none') else args.aa
        transform = create_transform(
            input_size=args.input_size, is_training=True, color_jitter=args.color_jitter,
            auto_augment=auto_augment, interpolation=args.train_interpolation,
            re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, mean=mean, std=std)
        if is_small_input:
            # CIFAR-style training: pad-and-crop instead of RandomResizedCrop.
            transform.transforms[0] = transforms.RandomCrop(args.input_size, padding=4)
        return transform

    steps = []
    if not is_small_input:
        if args.input_size >= 384:
            # Fine-tuned 384 models are evaluated on the whole image, warped to a square.
            steps.append(transforms.Resize((args.input_size, args.input_size),
                                           interpolation=InterpolationMode.BICUBIC))
        else:
            crop_pct = args.crop_pct if args.crop_pct is not None else DEFAULT_CROP_PCT
            steps.append(transforms.Resize(int(args.input_size / crop_pct),
                                           interpolation=InterpolationMode.BICUBIC))
            steps.append(transforms.CenterCrop(args.input_size))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


# ----------------------------------------------------------------------------------------------
# Image folders with an explicit policy for unreadable files
# ----------------------------------------------------------------------------------------------

class UnreadableSampleError(RuntimeError):
    """One sample cannot be read (a corrupt file, a malformed row); the message names the file and the fix.
    With --skip_corrupt the sample is skipped and counted instead (`SkipsUnreadable`)."""


class CheckedImageFolder(datasets.ImageFolder):
    """torchvision ImageFolder that names the file it cannot read, or skips and counts it.

    With skip_corrupt=True an unreadable sample is returned as None (see
    `collate_skipping_corrupt`). The counter lives in shared memory so that skips inside
    DataLoader worker processes are seen by the main process.
    """

    def __init__(self, root, transform, skip_corrupt):
        super().__init__(root, transform=transform)
        self.skip_corrupt = skip_corrupt
        self._skipped = multiprocessing.Value('q', 0)

    @property
    def skipped_count(self):
        return self._skipped.value

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except (OSError, Image.DecompressionBombError) as err:
            if not self.skip_corrupt:
                raise UnreadableSampleError(
                    f"Cannot read image '{path}' ({type(err).__name__}: {err}). Replace or delete the "
                    "file, or pass --skip_corrupt true to skip unreadable samples.") from err
            with self._skipped.get_lock():
                self._skipped.value += 1
            print(f"Skipping unreadable image '{path}' ({type(err).__name__}: {err})",
                  file=sys.stderr, flush=True)
            return None
        return self.transform(image), target


def collate_skipping_corrupt(batch, keep_even=True):
    """default_collate after dropping skipped (None) samples.

    With keep_even (training), if dropping leaves an odd number of samples out of an even batch, one more
    sample is dropped: timm's Mixup/CutMix needs even batches. Evaluation (keep_even=False) keeps every
    readable sample.
    """
    kept = [sample for sample in batch if sample is not None]
    if keep_even and len(kept) % 2 == 1 and len(batch) % 2 == 0:
        kept = kept[:-1]
    if not kept:
        raise UnreadableBatchError(
            f"All {len(batch)} images of a batch were unreadable; the data set looks broken "
            "(see the 'Skipping unreadable image' messages above).")
    return default_collate(kept)


class UnreadableBatchError(RuntimeError):
    """collate_skipping_corrupt: no sample of a batch could be read."""


class RankAgreedBatches:
    """A DataLoader whose UnreadableBatchError stops every rank, not only the one that met it (the others would
    wait in the next collective). Training (`every_batch`: all ranks run the same steps) agrees after each
    batch, one tiny all-reduce; evaluation (ranks may have a batch more or fewer) skips the batch and agrees
    once, at the end. Used with --skip_corrupt_images in distributed runs; other attributes are the loader's."""

    def __init__(self, loader, device, every_batch):
        self.loader, self.device, self.every_batch = loader, device, every_batch

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        error = None
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except UnreadableBatchError as unreadable:
                error, batch = unreadable, None
            if self.every_batch:
                self._stop_if_any_rank_failed(error)
            if batch is not None:
                yield batch
        self._stop_if_any_rank_failed(error)

    def _stop_if_any_rank_failed(self, error):
        if utils.any_rank_true([error is not None], self.device)[0]:
            raise error or UnreadableBatchError('another rank met a batch of unreadable images (see its error)')



class SkipsUnreadable(Dataset):
    """Base of the data sets of other modalities (modalities/) whose `read(index)` raises UnreadableSampleError
    naming a file it cannot read: that error stops the run, or with skip_corrupt the sample comes back as None
    (dropped by `collate_skipping_corrupt`), reported on stderr and counted across DataLoader worker processes.
    Other errors (bugs, wrong options) always stop the run."""

    def __init__(self, skip_corrupt):
        self.skip_corrupt = skip_corrupt
        self._skipped = multiprocessing.Value('q', 0)

    @property
    def skipped_count(self):
        return self._skipped.value

    def count_skips(self, number, message):
        with self._skipped.get_lock():
            self._skipped.value += number
        print(message, file=sys.stderr, flush=True)

    def keep_existing(self, samples, what):
        """The (path, label) samples whose file exists. Missing files are an error naming them, or with skip_corrupt
        skipped and counted; `what` names the files in the messages (e.g. 'clip')."""
        missing = [path for path, _ in samples if not os.path.isfile(path)]
        if missing and not self.skip_corrupt:
            raise FileNotFoundError(f"{len(missing)} listed {what}(s) do not exist, e.g. '{missing[0]}'. Fix the "
                                    "list/--data_path, or pass --skip_corrupt true to skip them.")
        if missing:
            self.count_skips(len(missing), f"Skipping {len(missing)} missing {what}(s), e.g. '{missing[0]}'")
        absent = set(missing)
        return [(path, label) for path, label in samples if path not in absent]

    def __getitem__(self, index):
        try:
            return self.read(index)
        except UnreadableSampleError as err:
            if not self.skip_corrupt:
                raise
            self.count_skips(1, f'Skipping: {err}')
            return None


def class_names(dataset, label_map=None):
    """The data set's class names in label order, as strings (checkpoints record them for tools/predict.py); None
    for a data set without classes (forecasting). Data sets that only know class indices (video list files with
    integer labels) take the names of --label_map when one is given."""
    classes = getattr(dataset, 'classes', None)
    if classes is None:
        return None
    if label_map and all(isinstance(name, int) for name in classes):
        from modalities.audio import read_label_map
        names = read_label_map(label_map)
        if len(names) == len(classes):
            return names
    return [str(name) for name in classes]


def class_folder_files(root, extensions, what, classes=None):
    """([(path, label)], classes) of a class-folder tree root/<class>/<file> (files with one of `extensions`, sorted),
    as ImageFolder reads images: classes = the sorted sub-folder names, unless `classes` (the training split's) is
    given; a sub-folder that is not one of those is an error naming it."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} folder not found: expected '{root}' (one sub-folder per class).")
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith('.'))
    classes = found if classes is None else classes
    index = {name: label for label, name in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise ValueError(f"{what} '{root}' has class folder(s) {unknown} that the training set does not have "
                         f"(its classes: {classes}); rename or remove them.")
    samples = [(os.path.join(root, name, file), index[name]) for name in found
               for file in sorted(os.listdir(os.path.join(root, name))) if file.lower().endswith(extensions)]
    if not samples:
        raise FileNotFoundError(f"{what} '{root}' has no {'/'.join(extensions)} files in class sub-folders "
                                f"(expected {root}/<class>/<file>).")
    return samples, classes


def class_folder_split(args, is_train, extensions):
    """([(path, label)], classes) of --data_path/train or --data_path/val (audio_folder, point_folder), in the
    training split's class order; the class count must equal --nb_classes (image_folder's error)."""
    train_root = os.path.join(args.data_path, 'train')
    samples, classes = class_folder_files(train_root, extensions, 'Training (--data_path/train)')
    if not is_train:
        samples, classes = class_folder_files(os.path.join(args.data_path, 'val'), extensions,
                                              'Evaluation (--data_path/val)', classes)
    if len(classes) != args.nb_classes:
        raise ValueError(f"'{train_root}' has {len(classes)} class folders but --nb_classes is {args.nb_classes}. "
                         f"Pass --nb_classes {len(classes)} (or point --data_path at the right folder).")
    return samples, classes


def count_skipped(dataset):
    """Number of unreadable samples skipped so far (0 for datasets that cannot skip)."""
    return getattr(dataset, 'skipped_count', 0)


def image_folder(root, transform, args, what):
    """The class-folder tree at root, or with --data_format shards the tools/make_shards.py output for it."""
    if getattr(args, 'data_format', 'folder') == 'shards':
        dataset = shards.ShardDataset(root, transform)
        found = f"'{root}' holds shards of {len(dataset.classes)} classes"
    else:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{what} folder not found: expected '{root}' (one sub-folder per class).")
        dataset = CheckedImageFolder(root, transform, skip_corrupt=getattr(args, 'skip_corrupt_images', False))
        found = f"'{root}' has {len(dataset.classes)} class folders"
    if len(dataset.classes) != args.nb_classes:
        raise ValueError(
            f"{found} but --nb_classes is {args.nb_classes}. "
            f"Pass --nb_classes {len(dataset.classes)} (or point --data_path/--eval_data_path at the "
            "right folder).")
    return dataset


# ----------------------------------------------------------------------------------------------
# Data files that are pickles, read without running code
# ----------------------------------------------------------------------------------------------

class UnsafeDataFileError(ValueError):
    """A data file (a pickle) refers to a Python object its format never holds; it was not run."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain data and the globals in `allowed` ((module, name) pairs); any other global, the way a
    pickle calls a function, raises UnsafeDataFileError naming `source` before anything is called.

    This is the standard library's own recipe ("Restricting Globals" in the pickle documentation): numpy's
    `np.load(allow_pickle=True)` and torchvision's CIFAR reader unpickle without restriction, and torch's
    weights_only unpickler reads only torch's zip format.
    """

    def __init__(self, file, allowed, source, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise UnsafeDataFileError(
                f"{self.source} refers to the Python object {module}.{name}, which this data format never holds; "
                "unpickling it could run code, so it was refused. Replace the file with the original download.")
        return super().find_class(module, name)


# What a pickled numpy array refers to (numpy 1.x and 2.x module names): its reconstruction from class, dtype and
# raw bytes, scalars, and the buffer form of protocol 5.
NUMPY_ARRAY_GLOBALS = frozenset(
    [(module, name) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
     for name in ('_reconstruct', 'scalar')]
    + [(module, '_frombuffer') for module in ('numpy.core.numeric', 'numpy._core.numeric')]
    + [('numpy', 'ndarray'), ('numpy', 'dtype')])
# CIFAR-100's python version: dicts of lists, bytes/str, ints and uint8 arrays (pickled by Python 2; a copy
# re-pickled by Python 3 at protocol 2 writes bytes as _codecs.encode(text, 'latin1')).
CIFAR_PICKLE_GLOBALS = NUMPY_ARRAY_GLOBALS | {('_codecs', 'encode')}


def unpickle_restricted(file, allowed, source, **kwargs):
    """The object pickled in the open `file`, by RestrictedUnpickler; a truncated or garbled pickle is a ValueError
    naming `source`."""
    try:
        return RestrictedUnpickler(file, allowed, source, **kwargs).load()
    except UnsafeDataFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{source} is not a readable pickle ({type(err).__name__}: {err}); the file is truncated "
                         "or corrupt. Replace it with the original download.") from err


def load_restricted_pickle(path, allowed, **kwargs):
    with open(path, 'rb') as f:
        return unpickle_restricted(f, allowed, path, **kwargs)


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_npy_restricted(path, allowed):
    """The array of an .npy file. An object array (stored as a pickle) is unpickled by RestrictedUnpickler with
    `allowed`; np.load(allow_pickle=True) would run whatever the pickle calls, and numpy has no hook to restrict it."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if 'allow_pickle' not in str(err):   # numpy's refusal of an object array; anything else is a bad file
            raise ValueError(f'{path} is not a readable .npy array ({err})') from err
    with open(path, 'rb') as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, _, _ = NPY_HEADER_READERS[version](f)
        except (ValueError, KeyError) as err:
            raise ValueError(f'{path} is not an .npy array file np.save writes ({type(err).__name__}: {err}). '
                             'Replace it with the original download.') from err
        array = unpickle_restricted(f, allowed, path)
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f'{path}: its pickle holds {type(array).__name__} {getattr(array, "shape", "")}, not the '
                         f'array of shape {shape} its header announces. Replace it with the original download.')
    return array


# ----------------------------------------------------------------------------------------------
# CIFAR-100 (local copy only) and the bundled digits
# ----------------------------------------------------------------------------------------------

def read_cifar_pickle(path, keys):
    """A CIFAR-100 python-version file: a dict holding `keys` (bytes), read without running code."""
    content = load_restricted_pickle(path, CIFAR_PICKLE_GLOBALS, encoding='bytes')
    missing = [key.decode() for key in keys if not isinstance(content, dict) or key not in content]
    if missing:
        raise ValueError(f"{path} is not a CIFAR-100 python-version file: it has no {', '.join(missing)}. Extract "
                         "cifar-100-python.tar.gz (python version) again.")
    return content


class LocalCIFAR100(Dataset):
    """CIFAR-100 read from the python-version pickles; never downloads, never runs code from them.

    torchvision's CIFAR100 is not used because it downloads when asked, insists on the official checksums and
    unpickles without restriction; this reads the same files (train/test: b'data' N x 3072 uint8 and
    b'fine_labels'; meta: b'fine_label_names') with `RestrictedUnpickler`.
    """

    def __init__(self, folder, train, transform):
        split_path = os.path.join(folder, 'train' if train else 'test')
        entry = read_cifar_pickle(split_path, (b'data', b'fine_labels'))
        meta = read_cifar_pickle(os.path.join(folder, 'meta'), (b'fine_label_names',))
        data = np.asarray(entry[b'data'], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(entry[b'fine_labels']):
            raise ValueError(f"{split_path}: data has shape {data.shape} and there are {len(entry[b'fine_labels'])} "
                             "labels; CIFAR-100 holds N x 3072 uint8 images and N labels. Extract "
                             "cifar-100-python.tar.gz (python version) again.")
        self.images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [int(label) for label in entry[b'fine_labels']]
        self.classes = [name.decode() for name in meta[b'fine_label_names']]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]


def cifar100_folder(data_path):
    """The folder holding train/test/meta: data_path/cifar-100-python or data_path itself."""
    required = ('train', 'test', 'meta')
    for folder in (os.path.join(data_path, 'cifar-100-python'), data_path):
        if all(os.path.isfile(os.path.join(folder, name)) for name in required):
            return folder
    raise FileNotFoundError(
        f"CIFAR-100 not found: expected the files train, test and meta in "
        f"'{os.path.join(data_path, 'cifar-100-python')}'. Download cifar-100-python.tar.gz "
        "(python version) from https://www.cs.toronto.edu/~kriz/cifar.html, extract it into "
        "--data_path, and run again; this code never downloads data.")


class Digits(Dataset):
    """scikit-learn's 8x8 digits as 32x32 RGB PIL images; 80/20 split, stratified, fixed seed."""

    def __init__(self, train, transform):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        train_idx, val_idx = train_test_split(
            np.arange(len(digits.target)), test_size=DIGITS_VAL_FRACTION,
            stratify=digits.target, random_state=0)
        indices = train_idx if train else val_idx
        # Pixel values are 0..16; scale to 0..255 and enlarge with nearest-neighbour.
        images = (digits.images[indices] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = images.repeat(DIGITS_IMAGE_SIZE // 8, axis=1).repeat(DIGITS_IMAGE_SIZE // 8, axis=2)
        self.targets = [int(t) for t in digits.target[indices]]
        self.classes = [str(d) for d in range(10)]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index]).convert('RGB')
        return self.transform(image), self.targets[index]


# ----------------------------------------------------------------------------------------------
# Seeded augmentation
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def seeded_random_state(seed):
    """Seed python `random`, numpy and torch (whose manual_seed also seeds every CUDA generator); restore the
    previous states on exit, the CUDA generators' included."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)


class DatasetWrapper(Dataset):
    """Base of the wrappers below: `classes` and the skipped-sample count are the wrapped data set's."""

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def skipped_count(self):
        return count_skipped(self.dataset)


class RepeatedSamples(DatasetWrapper):
    """Each sample `repeats` times: index i * repeats + k is copy k of sample i. Under SeededAugmentation every
    copy has an index of its own, hence its own augmentation (repeated augmentation, --repeated_aug)."""

    def __init__(self, dataset, repeats):
        super().__init__(dataset)
        self.repeats = repeats

    def __len__(self):
        return len(self.dataset) * self.repeats

    def __getitem__(self, index):
        return self.dataset[index // self.repeats]


class SeededAugmentation(DatasetWrapper):
    """Makes each sample's random augmentation a function of (seed, epoch, index) only."""

    def __init__(self, dataset, seed):
        super().__init__(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        with seeded_random_state(int(sample_seed)):
            return self.dataset[index]


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def build_image_dataset(is_train, args):
    """(dataset, nb_classes) of an image data set (IMNET, image_folder, CIFAR, DIGITS: their specs below)."""
    transform = build_transform(is_train, args)
    split = 'train' if is_train else 'val'
    if getattr(args, 'data_format', 'folder') == 'shards' and args.data_set not in FOLDER_DATA_SETS:
        raise ValueError(f"--data_format shards reads converted image folders ({', '.join(FOLDER_DATA_SETS)}); "
                         f"--data_set {args.data_set} is not one: pass --data_format folder.")
    if args.data_set in DATA_SETS_READ_FROM_DATA_PATH and not args.data_path:
        raise ValueError(f"--data_set {args.data_set} reads its images from --data_path, which is not set; pass "
                         "--data_path /path/to/data (README: Data sets), or try the code with --data_set DIGITS.")
    if args.data_set == 'IMNET':
        dataset = image_folder(os.path.join(args.data_path, split), transform, args, f"ImageNet {split}")
    elif args.data_set == 'image_folder':
        if is_train:
            dataset = image_folder(args.data_path, transform, args, "Training (--data_path)")
        elif args.eval_data_path is None:
            raise ValueError("--data_set image_folder needs --eval_data_path for evaluation "
                             "(or pass --disable_eval true to train without a validation set).")
        else:
            dataset = image_folder(args.eval_data_path, transform, args, "Evaluation (--eval_data_path)")
    elif args.data_set == 'CIFAR':
        dataset = LocalCIFAR100(cifar100_folder(args.data_path), is_train, transform)
    else:
        dataset = Digits(is_train, transform)
    return dataset, len(dataset.classes)


def build_dataset(is_train, args):
    """(dataset, nb_classes) for args.data_set, read by its spec's builder; the training set is wrapped in
    SeededAugmentation (and RepeatedSamples with --repeated_aug)."""
    dataset, nb_classes = specs.get(args.data_set).build_dataset(is_train, args)
    if is_train and getattr(args, 'repeated_aug', 1) > 1:
        dataset = RepeatedSamples(dataset, args.repeated_aug)
    if is_train:
        dataset = SeededAugmentation(dataset, args.seed)
    print(f"{args.data_set} {'train' if is_train else 'val'}: {len(dataset)} images, {nb_classes} classes")
    return dataset, nb_classes


# The image data sets. Their defaults are main.py's parser defaults (the ImageNet-1K recipe of the release) except
# where a data set fixes a value: its class count, and for the 8x8 digits (enlarged to 32x32) the input size.
SPECS = {
    'IMNET': specs.DataSetSpec('IMNET', build_image_dataset),
    'image_folder': specs.DataSetSpec('image_folder', build_image_dataset),
    'CIFAR': specs.DataSetSpec('CIFAR', build_image_dataset, defaults={'nb_classes': 100}),
    'DIGITS': specs.DataSetSpec('DIGITS', build_image_dataset,
                                defaults={'nb_classes': 10, 'input_size': DIGITS_IMAGE_SIZE}),
}
