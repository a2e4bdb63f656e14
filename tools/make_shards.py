"""Convert an ImageFolder tree into tar shards with an index, for `main.py --data_format shards`.

    python tools/make_shards.py --src /data/imagenet-1k --dst /fast/imagenet-1k-shards     # train/ and val/
    python tools/make_shards.py --src /data/imagenet-22k --dst /fast/imagenet-22k-shards   # flat: class folders

Layouts: if --src holds only `train/` (and `val/`) folders, each is converted into the same-named folder of
--dst (the IMNET layout: train with `--data_set IMNET --data_path DST`); otherwise --src itself is the class-
folder tree (the 22K flat layout: `--data_set image_folder --data_path DST`, and its evaluation set converted
separately and passed as --eval_data_path). Samples keep torchvision ImageFolder's order and class indices, so
sample i of the shards is sample i of the folder. The file format is described in shards.py.

Shards are written by --workers processes. Each shard goes to a temporary name, is fsync'ed, read back with
Python's tarfile to build its index, and only then renamed; its .json index is renamed after it, and the split's
shards.json manifest last. An interrupted conversion is resumed by running the same command again: finished
shards are verified against their index (size, sha256, every tar member) and kept, anything else is rewritten.
The result is byte-identical to an uninterrupted conversion (fixed tar metadata, deterministic shard contents).

Every image is decoded once (JPEG at 1/8 scale, which still reads all the compressed data) and unreadable
files are skipped and listed in the summary and in shards.json. `--verify` only checks existing shards.
"""
import argparse
import hashlib
import io
import json
import multiprocessing
import os
import shlex
import sys
import tarfile
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset  # noqa: E402

import shards  # noqa: E402

DEFAULT_SHARD_SIZE = 1000   # images per shard: ~110 MB of ImageNet JPEGs
SPLITS = ('train', 'val')
TMP_MARKER = '.tmp-'
HASH_CHUNK = 1 << 20


@dataclass
class ShardTask:
    split_dir: str      # destination split folder
    number: int
    src_root: str       # source class-folder tree
    members: list       # [(path relative to src_root, label)] in ImageFolder order


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', required=True, help='ImageFolder tree: train/ and val/, or class folders')
    parser.add_argument('--dst', required=True, help='output folder (created; resumed if it holds shards)')
    parser.add_argument('--shard_size', type=int, default=DEFAULT_SHARD_SIZE, help='images per shard')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='processes writing shards (default: min(8, CPU count))')
    parser.add_argument('--verify', action='store_true', help='only verify existing shards against their index')
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.workers < 1:
        parser.error('--shard_size and --workers must be at least 1')
    if not os.path.isdir(args.src):
        parser.error(f"--src '{args.src}' is not a folder")
    return args


def rebuild_command(args):
    command = ['python', 'tools/make_shards.py', '--src', os.path.abspath(args.src), '--dst', os.path.abspath(args.dst)]
    if args.shard_size != DEFAULT_SHARD_SIZE:
        command += ['--shard_size', str(args.shard_size)]
    return shlex.join(command)


def source_splits(src):
    """['train', 'val'] (those present) for the IMNET layout, [''] when src itself holds the class folders."""
    folders = {entry.name for entry in os.scandir(src) if entry.is_dir()}
    if 'train' in folders and folders <= set(SPLITS):
        return [split for split in SPLITS if split in folders]
    return ['']


def plan_shards(src_root, split_dir, shard_size):
    """(classes, [ShardTask]): ImageFolder's samples cut into consecutive shards."""
    classes, class_to_idx = find_classes(src_root)
    samples = make_dataset(src_root, class_to_idx, extensions=IMG_EXTENSIONS)
    members = [(os.path.relpath(path, src_root), label) for path, label in samples]
    tasks = [ShardTask(split_dir, number, src_root, members[start:start + shard_size])
             for number, start in enumerate(range(0, len(members), shard_size))]
    return classes, tasks


def unreadable_reason(data):
    """None if PIL decodes the image, else the error (the JPEG decoder runs at 1/8 scale: still every byte)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft('RGB', (1, 1))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f'{type(err).__name__}: {err}'
    return None


def tar_member(name, size):
    """Fixed metadata, so a shard's bytes depend only on the images (resumed == uninterrupted)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def fsync_rename(tmp_path, final_path):
    with open(tmp_path, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, final_path)
    directory = os.open(os.path.dirname(final_path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path, data):
    tmp_path = f'{path}{TMP_MARKER}{os.getpid()}'
    with open(tmp_path, 'w') as f:
        json.dump(data, f)
    fsync_rename(tmp_path, path)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def read_tar_members(path):
    """[(name, data offset, size)] of a tar file, read with Python's tarfile."""
    with tarfile.open(path, mode='r:') as tar:
        return [(member.name, member.offset_data, member.size) for member in tar]


def shard_paths(task):
    base = os.path.join(task.split_dir, shards.shard_name(task.number))
    return base + '.tar', base + '.json'


def write_shard(task):
    """Write the shard and its index (each to a temporary name, fsync'ed, then renamed); returns the index."""
    tar_path, index_path = shard_paths(task)
    tmp_path = f'{tar_path}{TMP_MARKER}{os.getpid()}'
    kept, unreadable = [], []
    with tarfile.open(tmp_path, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for relative_path, label in task.members:
            with open(os.path.join(task.src_root, relative_path), 'rb') as f:
                data = f.read()
            reason = unreadable_reason(data)
            if reason:
                unreadable.append([relative_path, reason])
                continue
            tar.addfile(tar_member(relative_path, len(data)), io.BytesIO(data))
            kept.append((relative_path, label))
    written = read_tar_members(tmp_path)
    if [name for name, _, _ in written] != [name for name, _ in kept]:
        raise RuntimeError(f"'{tmp_path}' read back does not hold the files just written (disk or file system "
                           "error?); run the command again to rewrite it.")
    index = {
        'name': os.path.basename(tar_path),
        'bytes': os.path.getsize(tmp_path),
        'sha256': file_sha256(tmp_path),
        'sources': [[relative_path, label] for relative_path, label in task.members],
        'members': [[name, offset, size, label] for (name, offset, size), (_, label) in zip(written, kept)],
        'unreadable': unreadable,
    }
    fsync_rename(tmp_path, tar_path)
    write_json(index_path, index)
    return index


def shard_problems(split_dir, index):
    """What is wrong with a finished shard compared with its index ([] if nothing)."""
    path = os.path.join(split_dir, index['name'])
    if not os.path.isfile(path):
        return [f'{path}: missing']
    size = os.path.getsize(path)
    if size != index['bytes']:
        return [f"{path}: {size} bytes, its index says {index['bytes']} ({'truncated' if size < index['bytes'] else 'replaced'})"]
    if file_sha256(path) != index['sha256']:
        return [f'{path}: sha256 differs from its index (the contents changed)']
    try:
        members = read_tar_members(path)
    except tarfile.TarError as err:
        return [f'{path}: not a readable tar file ({err})']
    expected = [(name, offset, size) for name, offset, size, _ in index['members']]
    if members != expected:
        return [f'{path}: its tar members (name, offset, size) differ from its index']
    return []


def read_shard_index(task):
    """The existing index of the task's shard if it covers the same source files, else None."""
    _, index_path = shard_paths(task)
    if not os.path.isfile(index_path):
        return None
    with open(index_path) as f:
        index = json.load(f)
    if index.get('sources') != [[relative_path, label] for relative_path, label in task.members]:
        return None
    return index


def ensure_shard(task):
    """(index, rewritten): keep a finished shard that verifies against its index, else (re)write it."""
    index = read_shard_index(task)
    if index is not None and not shard_problems(task.split_dir, index):
        return index, False
    return write_shard(task), True


def remove_temporary_files(split_dir):
    """Half-written files of an interrupted run (never used: only renamed files count)."""
    for entry in os.scandir(split_dir):
        if TMP_MARKER in entry.name:
            os.remove(entry.path)


def progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit='img', desc='make_shards', file=sys.stderr)


def convert(tasks, workers):
    """Run ensure_shard over all tasks in parallel; returns {(split_dir, number): index}."""
    bar = progress_bar(sum(len(task.members) for task in tasks))
    indexes, rewritten = {}, 0
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        for task, (index, was_written) in zip(tasks, pool.imap(ensure_shard, tasks)):
            indexes[task.split_dir, task.number] = index
            rewritten += was_written
            if bar is not None:
                bar.update(len(task.members))
            else:
                print(f'{len(indexes)}/{len(tasks)} shards', flush=True)
    if bar is not None:
        bar.close()
    print(f'{rewritten} shards written, {len(tasks) - rewritten} kept from an earlier run (verified)')
    return indexes


def write_split(split_dir, classes, shard_indexes, command):
    """index.npy, then shards.json (whose presence marks the split as complete)."""
    rows = [(number, offset, size, label) for number, index in enumerate(shard_indexes)
            for _, offset, size, label in index['members']]
    index_path = os.path.join(split_dir, shards.INDEX_NAME)
    tmp_path = f'{index_path}{TMP_MARKER}{os.getpid()}'
    with open(tmp_path, 'wb') as f:
        np.save(f, np.array(rows, dtype=shards.INDEX_DTYPE))
    fsync_rename(tmp_path, index_path)
    manifest = {
        'format': shards.FORMAT,
        'version': shards.FORMAT_VERSION,
        'classes': classes,
        'num_samples': len(rows),
        'shards': [{'name': index['name'], 'bytes': index['bytes'], 'sha256': index['sha256'],
                    'num_samples': len(index['members'])} for index in shard_indexes],
        'unreadable': [path for index in shard_indexes for path, _ in index['unreadable']],
        'rebuild_command': command,
    }
    write_json(os.path.join(split_dir, shards.MANIFEST_NAME), manifest)
    return manifest


def print_summary(split_dir, manifest, shard_indexes):
    total_bytes = sum(shard['bytes'] for shard in manifest['shards'])
    print(f"{split_dir}: {manifest['num_samples']} images, {len(manifest['classes'])} classes, "
          f"{len(manifest['shards'])} shards, {total_bytes} bytes ({total_bytes / 2**30:.2f} GiB)")
    unreadable = [entry for index in shard_indexes for entry in index['unreadable']]
    if unreadable:
        print(f'  {len(unreadable)} unreadable files skipped:')
        for path, reason in unreadable:
            print(f'    {path}: {reason}')


def verify(dst):
    """Check every shard of every split under dst against its index; returns the number of problems."""
    problems = 0
    for split in source_splits(dst):
        split_dir = os.path.join(dst, split)
        manifest = shards.read_manifest(split_dir)
        for shard in manifest['shards']:
            with open(os.path.join(split_dir, shard['name'][:-len('.tar')] + '.json')) as f:
                found = shard_problems(split_dir, json.load(f))
            problems += len(found)
            for problem in found:
                print(problem)
        print(f"{split_dir}: {len(manifest['shards'])} shards checked")
    return problems


def main(argv=None):
    args = parse_args(argv)
    if args.verify:
        problems = verify(args.dst)
        if problems:
            sys.exit(f'{problems} problems found; rebuild with: {rebuild_command(args)}')
        return
    command = rebuild_command(args)
    plans = []
    for split in source_splits(args.src):
        split_dir = os.path.join(args.dst, split)
        os.makedirs(split_dir, exist_ok=True)
        remove_temporary_files(split_dir)
        classes, tasks = plan_shards(os.path.join(args.src, split), split_dir, args.shard_size)
        plans.append((split_dir, classes, tasks))
    indexes = convert([task for _, _, tasks in plans for task in tasks], args.workers)
    for split_dir, classes, tasks in plans:
        shard_indexes = [indexes[split_dir, task.number] for task in tasks]
        print_summary(split_dir, write_split(split_dir, classes, shard_indexes, command), shard_indexes)


if __name__ == '__main__':
    main()
