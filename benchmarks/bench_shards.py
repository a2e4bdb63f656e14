"""Data loading from tar shards vs the image folder (and the other random-access candidates: the same shards through
WebDataset's indexed reader `wids`, and LMDB).

    python benchmarks/bench_shards.py --root /tmp/bench_shards --images 100000 --formats folder shards wids lmdb

Generates (once, kept under --root) an ImageFolder tree of --images small JPEG crops of scikit-image's photos,
converts it with tools/make_shards.py (and into one LMDB file, for the format choice; `pip install lmdb`), then
for each format and 0/1/2 DataLoader workers reads --read_images images in a random order over the whole set
(as the training sampler does), decoded to tensors, and reports:
  * img/s with a cold page cache (posix_fadvise(DONTNEED) on every file of that format just before the run:
    it evicts only this benchmark's files, unlike `echo 3 > /proc/sys/vm/drop_caches`, which would slow the
    other users of a shared machine; on a virtual disk the host may still cache), then warm (same images again);
  * conversion speed (img/s, from a cold source tree) and bytes on disk;
  * memory of one reading process after the run: RSS and USS (private pages, what each extra worker costs).
"""
import argparse
import io
import os
import shutil
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import datasets as tv_datasets, transforms  # noqa: E402

import shards  # noqa: E402
from tools import make_shards  # noqa: E402

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry', 'hubble_deep_field')
CROP = 64
CLASSES = 100
BATCH = 64
MEMORY_EVERY = 64   # samples between memory readings inside each reading process


def generate_tree(folder, images):
    """CLASSES class folders of 64x64 JPEG crops (quality 85) at random places of the photos."""
    import skimage.data
    photos = [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
    rng = np.random.default_rng(0)
    for index in range(images):
        label = index % CLASSES
        photo = photos[label % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - CROP), rng.integers(0, photo.shape[1] - CROP)
        class_dir = os.path.join(folder, f'class_{label:03d}')
        if index < CLASSES:
            os.makedirs(class_dir, exist_ok=True)
        Image.fromarray(photo[top:top + CROP, left:left + CROP]).save(
            os.path.join(class_dir, f'{index:07d}.jpg'), quality=85)


def write_lmdb(folder, path, workers):
    """One LMDB environment: key = sample index, value = the file's bytes; labels in a .npy beside it. LMDB has
    a single writer, so the worker processes only read and check the images (as make_shards does)."""
    import lmdb
    samples = tv_datasets.folder.make_dataset(folder, tv_datasets.folder.find_classes(folder)[1],
                                              extensions=tv_datasets.folder.IMG_EXTENSIONS)
    os.makedirs(path, exist_ok=True)
    environment = lmdb.open(path, map_size=1 << 40, subdir=True, lock=False)
    with torch.multiprocessing.get_context('fork').Pool(workers) as pool:
        transaction = environment.begin(write=True)
        for index, data in enumerate(pool.imap(read_checked, [sample_path for sample_path, _ in samples],
                                               chunksize=64)):
            transaction.put(f'{index:09d}'.encode(), data)
            if index % 1000 == 999:
                transaction.commit()
                transaction = environment.begin(write=True)
        transaction.commit()
    environment.sync()
    environment.close()
    np.save(os.path.join(path, 'labels.npy'), np.array([label for _, label in samples], dtype=np.int32))


def read_checked(path):
    with open(path, 'rb') as f:
        data = f.read()
    if make_shards.unreadable_reason(data):
        raise ValueError(path)
    return data


class LmdbImages(Dataset):
    """The LMDB candidate's reader, opened lazily per process (like ShardDataset)."""

    def __init__(self, path):
        self.path = path
        self.labels = np.load(os.path.join(path, 'labels.npy'), mmap_mode='r')
        self._environment, self._pid = None, None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        import lmdb
        if self._pid != os.getpid():
            self._environment = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False)
            self._pid = os.getpid()
        with self._environment.begin() as transaction:
            data = transaction.get(f'{index:09d}'.encode())
        return Image.open(io.BytesIO(data)).convert('RGB'), int(self.labels[index])

    def __getstate__(self):
        return {**self.__dict__, '_environment': None, '_pid': None}

    def close(self):
        # py-lmdb refuses to open an environment that its process (or the parent it forked from) holds open.
        if self._environment is not None:
            self._environment.close()
        self._environment, self._pid = None, None


def keep_local_path(url):
    """wids' `localname`: read a local shard where it is instead of copying it into a cache folder."""
    return url


class WidsImages(Dataset):
    """The same tar shards read through WebDataset's indexed reader (`wids`, `pip install wids`): it indexes a shard
    by scanning its tar headers when it opens it, and keeps the last `lru_size` (default 10) shards open."""

    def __init__(self, shard_dir):
        import wids
        manifest = shards.read_manifest(shard_dir)
        self.labels = shards.load_index(shard_dir, manifest)['label']
        self.dataset = wids.ShardListDataset(
            [{'url': os.path.join(shard_dir, shard['name']), 'nsamples': shard['num_samples']}
             for shard in manifest['shards']], localname=keep_local_path, transformations=[])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return Image.open(self.dataset[index]['.jpg']).convert('RGB'), int(self.labels[index])

    def close(self):
        self.dataset.close()   # its open shards would otherwise be inherited by the next pass's workers


def process_memory_kib():
    """(RSS, USS) of this process in KiB, from /proc/self/smaps_rollup."""
    fields = {}
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == 'kB':
                fields[parts[0].rstrip(':')] = int(parts[1])
    return fields['Rss'], fields['Private_Clean'] + fields['Private_Dirty']


class Measured(Dataset):
    """(tensor, label, (RSS, USS) of the reading process, sampled every MEMORY_EVERY samples, else -1)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.to_tensor = transforms.ToTensor()
        self.calls = 0   # per process: each DataLoader worker counts its own

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        self.calls += 1
        memory = process_memory_kib() if self.calls % MEMORY_EVERY == 0 else (-1, -1)
        return self.to_tensor(image), label, torch.tensor(memory)


def evict_from_page_cache(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(folder):
    return [os.path.join(directory, name) for directory, _, names in os.walk(folder) for name in names]


def read_throughput(dataset, order, workers):
    """(img/s, last (RSS, USS) seen in a reading process) over `order`."""
    loader = DataLoader(Measured(dataset), batch_size=BATCH, sampler=order, num_workers=workers)
    start = time.perf_counter()
    memory = (0, 0)
    for _, _, batch_memory in loader:
        sampled = batch_memory[batch_memory[:, 0] >= 0]
        if len(sampled):
            memory = tuple(int(value) for value in sampled[-1])
    seconds = time.perf_counter() - start
    if hasattr(dataset, 'close'):
        dataset.close()
    return len(order) / seconds, memory


def convert_timed(convert):
    start = time.perf_counter()
    convert()
    return time.perf_counter() - start


def disk_usage(folder):
    """Allocated bytes (as `du`), file-system blocks included."""
    return sum(os.stat(path).st_blocks * 512 for path in files_under(folder))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default='/tmp/bench_shards', help='working folder (kept between runs)')
    parser.add_argument('--images', type=int, default=100_000)
    parser.add_argument('--read_images', type=int, default=4096, help='images read per format and worker count')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='DataLoader worker counts')
    parser.add_argument('--convert_workers', type=int, default=2)
    parser.add_argument('--formats', nargs='+', default=['folder', 'shards'],
                        choices=['folder', 'shards', 'wids', 'lmdb'],
                        help="'wids' reads the 'shards' output with WebDataset's indexed reader (needs 'shards' first)")
    args = parser.parse_args(argv)
    if 'wids' in args.formats and 'shards' not in args.formats[:args.formats.index('wids')]:
        parser.error("--formats: 'wids' reads the tar shards, so list 'shards' before it")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    folder = os.path.join(args.root, f'folder_{args.images}')
    if not os.path.isdir(folder):
        start = time.perf_counter()
        generate_tree(folder + '.partial', args.images)
        os.replace(folder + '.partial', folder)
        print(f'generated {args.images} JPEGs in {time.perf_counter() - start:.0f} s')
    datasets_by_format, files_by_format = {}, {}
    print(f'| format | conversion (img/s, {args.convert_workers} processes) | bytes on disk |')
    print('|---|---|---|')
    files_by_format['folder'] = files_under(folder)
    print(f'| folder | - | {disk_usage(folder)} |')
    for data_format in args.formats:
        if data_format == 'folder':
            datasets_by_format[data_format] = tv_datasets.ImageFolder(folder)
            continue
        if data_format == 'wids':   # reads the tar shards written for 'shards' (listed before it)
            datasets_by_format[data_format] = WidsImages(datasets_by_format['shards'].split_dir)
            files_by_format[data_format] = files_by_format['shards']
            continue
        target = os.path.join(args.root, f'{data_format}_{args.images}')
        shutil.rmtree(target, ignore_errors=True)
        evict_from_page_cache(files_by_format['folder'])   # each conversion reads a cold source tree
        if data_format == 'shards':
            seconds = convert_timed(lambda: make_shards.main(
                ['--src', folder, '--dst', target, '--workers', str(args.convert_workers)]))
            datasets_by_format[data_format] = shards.ShardDataset(target)
        else:
            seconds = convert_timed(lambda: write_lmdb(folder, target, args.convert_workers))
            datasets_by_format[data_format] = LmdbImages(target)
        files_by_format[data_format] = files_under(target)
        print(f'| {data_format} | {args.images / seconds:.0f} | {disk_usage(target)} |')

    order = np.random.default_rng(0).permutation(args.images)[:args.read_images].tolist()
    print('\n| format | workers | cold img/s | warm img/s | reader RSS MiB | reader USS MiB |')
    print('|---|---|---|---|---|---|')
    for workers in args.workers:
        for data_format in args.formats:
            evict_from_page_cache(files_by_format[data_format])
            cold, _ = read_throughput(datasets_by_format[data_format], order, workers)
            warm, (rss, uss) = read_throughput(datasets_by_format[data_format], order, workers)
            print(f'| {data_format} | {workers} | {cold:.0f} | {warm:.0f} | {rss / 1024:.0f} | {uss / 1024:.0f} |',
                  flush=True)


if __name__ == '__main__':
    main()
