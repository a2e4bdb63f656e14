"""Image data sets packed into tar shards with an index, read with random access (`--data_format shards`).

Why: ImageNet-22K as 14M single files starves the GPUs on a shared cluster file system and hits file-count
quotas. Streaming formats would break exact mid-epoch resume, per-sample seeded augmentation and --dist_eval
(all need sample i on demand), so the shards here are map-style: `ShardDataset[i]` is ImageFolder's sample i.

Layout of one split directory, as written by `tools/make_shards.py` (see BENCHMARKS.md for why tar + index):

    shard-000000.tar    POSIX (pax) tar of the original image files under their ImageFolder-relative names
                        (`tar tf` lists them, `tar xf` gives back the class-folder tree)
    shard-000000.json   that shard's index: members (name, data offset, size, label), byte size, sha256
    index.npy           all samples in ImageFolder order: (shard, data offset, size, label), memory-mapped
    shards.json         manifest: classes (the class mapping), shards (name, bytes, sha256, samples),
                        unreadable source files that were skipped, and the command that rebuilds the shards

Reading is lazy and per process: the manifest and index are opened on first use; shard files are opened by
the process (DataLoader worker) that reads them, reopened after a fork (pid change) and never pickled; at most
MAX_OPEN_SHARDS stay open per process. The index is a read-only memory map, so its pages are shared by all
workers and ranks of a node: per-rank memory beyond it does not grow with the data set.

Checks: a missing shard and a shard whose size differs from the manifest (truncated, replaced) are reported
when the data set is opened; each read checks the tar header in front of the member (checksum and size), so
an index that does not match its shard is reported at the first sample read from it. Every error names the
shard and the make_shards command that rebuilds it.
"""
import io
import json
import os
import tarfile
from collections import OrderedDict

import numpy as np
from PIL import Image

FORMAT = 'tar-shards'
FORMAT_VERSION = 1
MANIFEST_NAME = 'shards.json'
INDEX_NAME = 'index.npy'
INDEX_DTYPE = np.dtype([('shard', '<u4'), ('offset', '<u8'), ('size', '<u8'), ('label', '<u4')])
TAR_BLOCK_SIZE = tarfile.BLOCKSIZE
MAX_OPEN_SHARDS = 64


class ShardError(RuntimeError):
    """A shard directory that cannot be read as written: the message says what is wrong and how to fix it."""


def shard_name(number):
    return f'shard-{number:06d}'


def read_manifest(split_dir):
    path = os.path.join(split_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ShardError(
            f"'{split_dir}' is not a shard directory: '{MANIFEST_NAME}' is missing (an unfinished conversion also "
            "lacks it). Convert the image folder with `python tools/make_shards.py --src IMAGE_FOLDER --dst "
            "SHARD_DIR` (run it again to finish an interrupted conversion), or train with --data_format folder.")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format') != FORMAT or manifest.get('version') != FORMAT_VERSION:
        raise ShardError(f"'{path}' is not a {FORMAT} manifest of version {FORMAT_VERSION}; rebuild the shards "
                         f"with: {manifest.get('rebuild_command', 'python tools/make_shards.py --src ... --dst ...')}")
    return manifest


def check_shard_files(split_dir, manifest):
    """Every shard listed in the manifest exists with the size the manifest records."""
    rebuild = manifest['rebuild_command']
    for shard in manifest['shards']:
        path = os.path.join(split_dir, shard['name'])
        if not os.path.isfile(path):
            raise ShardError(f"Shard '{path}' is missing. Rebuild the missing shards (finished ones are kept) "
                             f"with: {rebuild}")
        size = os.path.getsize(path)
        if size != shard['bytes']:
            what = 'truncated' if size < shard['bytes'] else 'not the one indexed'
            raise ShardError(f"Shard '{path}' has {size} bytes but its index says {shard['bytes']}: it is {what}. "
                             f"Delete it and rebuild it with: {rebuild}")


def load_index(split_dir, manifest):
    path = os.path.join(split_dir, INDEX_NAME)
    if not os.path.isfile(path):
        raise ShardError(f"Index '{path}' is missing; rebuild it with: {manifest['rebuild_command']}")
    index = np.load(path, mmap_mode='r')
    if index.dtype != INDEX_DTYPE or len(index) != manifest['num_samples']:
        raise ShardError(f"Index '{path}' does not match '{MANIFEST_NAME}' ({len(index)} entries of {index.dtype}, "
                         f"expected {manifest['num_samples']} of {INDEX_DTYPE}); rebuild it with: "
                         f"{manifest['rebuild_command']}")
    return index


class ShardDataset:
    """Map-style data set over one split directory of tar shards: (transform(RGB image), label).

    Sample i is the i-th image of the source ImageFolder (same class order, same file order), decoded the same
    way (PIL, converted to RGB), so training from shards equals training from the folder.
    """

    def __init__(self, split_dir, transform=None):
        self.split_dir = split_dir
        self.transform = transform
        self.manifest = read_manifest(split_dir)
        check_shard_files(split_dir, self.manifest)
        self.classes = list(self.manifest['classes'])
        self._index = None          # read-only memory map, opened on first use
        self._open_shards = OrderedDict()
        self._pid = None

    def __len__(self):
        return self.manifest['num_samples']

    @property
    def index(self):
        if self._index is None:
            self._index = load_index(self.split_dir, self.manifest)
        return self._index

    @property
    def targets(self):
        return [int(label) for label in self.index['label']]

    def __getstate__(self):
        # Open files and memory maps stay in the process that opened them.
        state = dict(self.__dict__)
        state.update(_index=None, _open_shards=OrderedDict(), _pid=None)
        return state

    def __del__(self):
        self._close_shards()

    def _close_shards(self):
        for fd in getattr(self, '_open_shards', {}).values():
            os.close(fd)
        self._open_shards = OrderedDict()

    def _shard_fd(self, shard):
        if self._pid != os.getpid():
            # A forked DataLoader worker: close its copies of the parent's descriptors and open its own (the
            # index's memory map is shared read-only memory, not a file handle, and stays).
            self._close_shards()
            self._pid = os.getpid()
        fd = self._open_shards.get(shard)
        if fd is None:
            if len(self._open_shards) >= MAX_OPEN_SHARDS:
                os.close(self._open_shards.popitem(last=False)[1])
            path = os.path.join(self.split_dir, self.manifest['shards'][shard]['name'])
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise ShardError(f"Shard '{path}' is missing. Rebuild it with: "
                                 f"{self.manifest['rebuild_command']}") from None
            self._open_shards[shard] = fd
        else:
            self._open_shards.move_to_end(shard)
        return fd

    def read_bytes(self, index):
        """The stored file of sample `index`, checked against the tar header in front of it."""
        entry = self.index[index]
        shard, offset, size = int(entry['shard']), int(entry['offset']), int(entry['size'])
        block = os.pread(self._shard_fd(shard), TAR_BLOCK_SIZE + size, offset - TAR_BLOCK_SIZE)
        path = os.path.join(self.split_dir, self.manifest['shards'][shard]['name'])
        rebuild = self.manifest['rebuild_command']
        if len(block) != TAR_BLOCK_SIZE + size:
            raise ShardError(f"Shard '{path}' ends before sample {index} (byte {offset + size}): it is truncated. "
                             f"Delete it and rebuild it with: {rebuild}")
        problem = None
        try:
            header = tarfile.TarInfo.frombuf(block[:TAR_BLOCK_SIZE], 'utf-8', 'surrogateescape')
        except tarfile.HeaderError as err:
            problem = f'no valid tar header in front of it ({err})'
        else:
            if header.size != size:
                problem = f'the tar header in front of it says {header.size} bytes'
        if problem:
            raise ShardError(f"The index does not match shard '{path}': sample {index} should be {size} bytes at "
                             f"byte {offset}, but {problem}. Delete the shard and its .json index and rebuild them "
                             f"with: {rebuild}")
        return block[TAR_BLOCK_SIZE:]

    def __getitem__(self, index):
        # The same decode as torchvision's default ImageFolder loader.
        image = Image.open(io.BytesIO(self.read_bytes(index))).convert('RGB')
        target = int(self.index[index]['label'])
        if self.transform is not None:
            image = self.transform(image)
        return image, target
