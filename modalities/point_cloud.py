"""Point clouds (UniRepLKNet paper Sec. 5, Table 12): ModelNet-40 and the P2P-style projection adapter.

`--data_set MODELNET40 --data_path DIR` reads either layout of ModelNet-40 (detected from the files in DIR):

* `modelnet40_normal_resampled/`: `modelnet40_shape_names.txt` (one class per line, in label order),
  `modelnet40_train.txt` / `modelnet40_test.txt` (one shape id per line, e.g. `airplane_0001`) and
  `<class>/<shape id>.txt` (lines `x,y,z,nx,ny,nz`; the normals are not used);
* `modelnet40_ply_hdf5_2048/`: `shape_names.txt` and `ply_data_train*.h5` / `ply_data_test*.h5`, each with `data`
  (N, points, 3) and `label` (N, 1).

A malformed point file (a row that is not 6 numbers, no points, a non-finite point) or an HDF5 file whose arrays
have the wrong shape is an error naming the file and line or sample; with --skip_corrupt it is skipped and counted
(datasets.SkipsUnreadable), as are missing point files.

Each sample is normalised into the unit sphere and its axes reordered to `[z, x, y] * [-1, -1, 1]`, as the release
loads ModelNet. A sample is a float tensor (..., N, 7) of points: columns 0-2 the placed (augmented, rotated) points,
3-5 the un-augmented points, 6 each point's rank in a random order (a permutation of 0..N-1).

Training: the loader draws a random start point and puts it first (as the release's shuffled point order does), a
random rank per point, a random rotation (azimuth 0.04-1.94 pi, elevation -0.4 to -0.2 pi), a per-axis scale in
[2/3, 3/2] and a translation in [-0.2, 0.2], applied to all N points of the shape (shape (N, 7)). The model then takes
the `--pc_fps_points` farthest points from point 0, batched on the training device (the release's pointnet2_ops
kernel does this in its training step), and keeps the `--pc_points` of them with the lowest ranks: a random subset of
the farthest-point sample. Rotation, scale and translation act point by point, so applying them before the sampling
gives the same points as after. Evaluation: the loader takes the `--pc_points` farthest points from point 0 (a fixed
choice, so once per shape rather than once per rotation on the device), each under `--pc_test_rotations` fixed
rotations (azimuth from linspace(0.1, 2, 9) pi, elevation -0.35 pi), shape (rotations, pc_points, 7); the reported
accuracy (`--pc_test_score per_rotation`, the release's) scores each rotation on its own and averages the accuracies;
`acc1_ensemble` beside it scores the mean of the rotations' class probabilities (`--pc_test_score ensemble` reports
that instead). The model samples only clouds larger than `--pc_points` (in eval mode: the `--pc_points` farthest from
point 0).

Farthest-point sampling compares squared distances in float64, so the compiled `fpsample` package (used on CPU when
installed) and the torch loop (any device) pick the same points.

Randomness comes from python/numpy/torch's global generators only, which `datasets.SeededAugmentation` seeds per
(seed, epoch, index), so a killed run resumes to bitwise-equal weights; the sampling in the model is deterministic.

Model (`build_model`): a P2P projection adapter (point encoder with kNN edge features on the un-augmented points,
features summed onto a 3x3 patch of an `--input_size` grid at each placed point's position in each of `--pc_views`
views, an image head with multi-view fusion, ImageNet normalisation) feeding the `--model` backbone; the views'
last-stage maps are concatenated over channels, averaged, LayerNorm, Linear. See README "Point clouds".
"""
import glob
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, Mlp
from timm.models.resnet import BasicBlock

import datasets
import specs

try:
    import fpsample   # optional (the `points` extra): exact compiled FPS on CPU
except ImportError:
    fpsample = None

TEXT_FILES = ('modelnet40_shape_names.txt', 'modelnet40_train.txt', 'modelnet40_test.txt')
HDF5_SHAPE_NAMES = 'shape_names.txt'
POINT_FILE_COLUMNS = 6   # x, y, z, nx, ny, nz
# Augmentation and test rotations of the release (Point/tool/train_adaptor_lkv.py), in units of pi.
TRAIN_AZIMUTH_RANGE = (0.04, 1.94)
TRAIN_ELEVATION_RANGE = (-0.4, -0.2)
TEST_AZIMUTHS = np.linspace(0.1, 2, 9)[:8]
TEST_ELEVATION = -0.35
SCALE_RANGE = (2 / 3, 3 / 2)
TRANSLATION_RANGE = 0.2
# Columns of a sample's points: placed (augmented, rotated) xyz, un-augmented xyz, the point's rank in a random order.
PLACED, ORIGINAL, RANK = slice(0, 3), slice(3, 6), 6
MAX_EXACT_RANK = 2 ** 24   # float32 holds every integer rank below this
FUSION_PATCH = 7          # MultiViewFusionV2: 7x7 stride-7 conv to tokens
FUSION_HEADS = 8


# ----------------------------------------------------------------------------------------------
# Reading the two layouts
# ----------------------------------------------------------------------------------------------

def read_lines(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def first_malformed_line(path):
    """(line number, text) of the first non-empty line of a point file that is not POINT_FILE_COLUMNS numbers."""
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(',')
            try:
                [float(field) for field in fields]
            except ValueError:
                return number, line.strip()
            if len(fields) != POINT_FILE_COLUMNS:
                return number, line.strip()
    return None, None


def read_point_file(path):
    """(N, 3) xyz of a `x,y,z,nx,ny,nz` text file; a malformed or empty file is an UnreadableSampleError naming the
    file and its first bad line."""
    fix = ('Replace the file with the original download, or pass --skip_corrupt true to skip unreadable samples.')
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='loadtxt: input contained no data')  # reported below
            points = np.loadtxt(path, delimiter=',', dtype=np.float32, ndmin=2)
    except (ValueError, OSError) as err:
        number, line = first_malformed_line(path) if isinstance(err, ValueError) else (None, None)
        where = f', line {number}: {line!r} is not {POINT_FILE_COLUMNS} comma-separated numbers' if number else ''
        raise datasets.UnreadableSampleError(f'Cannot read point file {path}{where} ({err}). {fix}') from err
    if points.size == 0:
        raise datasets.UnreadableSampleError(f'Point file {path} holds no points. {fix}')
    if points.shape[1] != POINT_FILE_COLUMNS:
        raise datasets.UnreadableSampleError(
            f'{path}: {points.shape[1]} comma-separated columns per line, but ModelNet-40 point files have '
            f'{POINT_FILE_COLUMNS} (x,y,z,nx,ny,nz). Point --data_path at the modelnet40_normal_resampled folder, or '
            'convert the file to that format.')
    return points[:, :3]


class ModelNet40Text:
    """`modelnet40_normal_resampled/`: shape lists plus one text file per shape, read lazily. `unreadable` lists
    (message, number of samples) of what cannot be read (missing point files), for ModelNet40 to raise or skip."""

    def __init__(self, root, split):
        self.classes = read_lines(os.path.join(root, 'modelnet40_shape_names.txt'))
        label_of = {name: label for label, name in enumerate(self.classes)}
        self.items = []
        missing = []
        for shape_id in read_lines(os.path.join(root, f'modelnet40_{split}.txt')):
            class_name = shape_id.rsplit('_', 1)[0]
            path = os.path.join(root, class_name, f'{shape_id}.txt')
            if class_name not in label_of:
                raise ValueError(f'{root}/modelnet40_{split}.txt: shape {shape_id!r} belongs to class '
                                 f'{class_name!r}, which is not in modelnet40_shape_names.txt')
            if os.path.isfile(path):
                self.items.append((path, label_of[class_name]))
            else:
                missing.append(path)
        self.unreadable = [] if not missing else [(
            f'{len(missing)} point file(s) listed in {root}/modelnet40_{split}.txt are missing, e.g. {missing[:3]}; '
            'the layout is <class>/<shape id>.txt. Restore them, or pass --skip_corrupt true to skip them.',
            len(missing))]

    def __len__(self):
        return len(self.items)

    def source(self, index):
        return self.items[index][0]

    def __getitem__(self, index):
        path, label = self.items[index]
        return read_point_file(path), label


def read_hdf5_file(path):
    """(points (N, P, 3) float32, labels (N,) int64) of one `ply_data_*.h5` file. A file that cannot be read or whose
    arrays have the wrong shape raises UnreadableSampleError naming it; its `samples` attribute is how many samples
    the file holds (1 when not even that can be read), for --skip_corrupt to count."""
    import h5py   # only this layout needs it
    expected = 'the HDF5 layout of ModelNet-40 has data (N, points, 3) and label (N,) or (N, 1)'
    fix = ('Replace the file with the original download, or pass --skip_corrupt true to skip its samples.')
    samples = 1
    try:
        with h5py.File(path, 'r') as f:
            missing = [key for key in ('data', 'label') if key not in f]
            if missing:
                problem = f'has no {" or ".join(map(repr, missing))} dataset (keys: {sorted(f.keys())}); {expected}'
            else:
                data, labels = f['data'], f['label']
                samples = data.shape[0] if data.ndim else 1
                problem = None
                if data.ndim != 3 or data.shape[2] < 3:
                    problem = f'data has shape {data.shape}; {expected}'
                elif labels.size != data.shape[0] or labels.ndim > 2:
                    problem = f'label has shape {labels.shape} for data of shape {data.shape}; {expected}'
                else:
                    points = np.asarray(data[..., :3], dtype=np.float32)
                    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    except OSError as err:
        problem = f'cannot be read by h5py ({err})'
    if problem is not None:
        error = datasets.UnreadableSampleError(f'{path}: {problem}. {fix}')
        error.samples = samples
        raise error
    return points, labels


class ModelNet40HDF5:
    """`modelnet40_ply_hdf5_2048/`: every `ply_data_{split}*.h5` file loaded into memory. `unreadable` lists
    (message, number of samples) of the files that cannot be read, for ModelNet40 to raise or skip."""

    def __init__(self, root, split):
        self.classes = read_lines(os.path.join(root, HDF5_SHAPE_NAMES))
        files = sorted(glob.glob(os.path.join(root, f'ply_data_{split}*.h5')))
        if not files:
            raise FileNotFoundError(f'{root} has no ply_data_{split}*.h5 file (HDF5 layout of ModelNet-40)')
        points, labels, self.sources, self.unreadable = [], [], [], []
        for path in files:
            try:
                file_points, file_labels = read_hdf5_file(path)
            except datasets.UnreadableSampleError as error:
                self.unreadable.append((str(error), error.samples))
                continue
            points.append(file_points)
            labels.append(file_labels)
            self.sources += [f'{path} sample {index}' for index in range(len(file_labels))]
            if len(file_labels) and (file_labels.min() < 0 or file_labels.max() >= len(self.classes)):
                raise ValueError(f'{path}: labels range over {file_labels.min()}..{file_labels.max()} but '
                                 f'{HDF5_SHAPE_NAMES} lists {len(self.classes)} classes')
        self.points = np.concatenate(points) if points else np.zeros((0, 0, 3), np.float32)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def __len__(self):
        return len(self.labels)

    def source(self, index):
        return self.sources[index]

    def __getitem__(self, index):
        return self.points[index], int(self.labels[index])


def open_modelnet40(root, split):
    """The reader of whichever layout `root` holds; an error says what each layout needs and what is missing."""
    if glob.glob(os.path.join(root, 'ply_data_*.h5')):
        if not os.path.isfile(os.path.join(root, HDF5_SHAPE_NAMES)):
            raise FileNotFoundError(f'{root} holds ply_data_*.h5 files but no {HDF5_SHAPE_NAMES} (the class names '
                                    'in label order, shipped with modelnet40_ply_hdf5_2048)')
        return ModelNet40HDF5(root, split)
    missing = [name for name in TEXT_FILES if not os.path.isfile(os.path.join(root, name))]
    if missing:
        raise FileNotFoundError(
            f'--data_path {root} is not a ModelNet-40 folder: missing {", ".join(missing)}. Expected either '
            'modelnet40_normal_resampled/ (modelnet40_shape_names.txt, modelnet40_train.txt, modelnet40_test.txt, '
            '<class>/<shape id>.txt) or modelnet40_ply_hdf5_2048/ (shape_names.txt, ply_data_train*.h5, '
            'ply_data_test*.h5).')
    return ModelNet40Text(root, split)


# ----------------------------------------------------------------------------------------------
# Sampling and augmentation
# ----------------------------------------------------------------------------------------------

@torch.compiler.disable   # --compile: a graph break here, not a trace of thousands of loop steps
def farthest_point_sample(points, count, start=0):
    """Indices (..., count) of `count` farthest points of `points` (..., N, D), greedily from index `start`.

    On CPU the compiled `fpsample` package when installed, else the torch loop (any device); both compare squared
    distances in float64, so they pick the same points.
    """
    if fpsample is not None and points.device.type == 'cpu':
        return compiled_farthest_point_sample(points, count, start)
    return torch_farthest_point_sample(points, count, start)


def compiled_farthest_point_sample(points, count, start=0):
    """farthest_point_sample with fpsample's exact FPS (compiled, about 13x the float64 torch loop on one core; it
    holds the GIL, so the clouds of a batch go one after another)."""
    flat = points.detach().reshape(-1, *points.shape[-2:]).double().numpy()
    chosen = np.stack([fpsample.fps_sampling(cloud, count, start_idx=start) for cloud in flat]).astype(np.int64)
    return torch.from_numpy(chosen).reshape(*points.shape[:-2], count)


@torch.no_grad()
def torch_farthest_point_sample(points, count, start=0):
    """farthest_point_sample as a torch loop, batched over the leading dims (the release's pointnet2_ops kernel
    is CUDA-only): each step adds the point farthest from all chosen so far (the first such point on ties)."""
    batch_shape, num_points = points.shape[:-2], points.shape[-2]
    flat = points.reshape(-1, num_points, points.shape[-1]).double()
    nearest = torch.full(flat.shape[:2], float('inf'), dtype=flat.dtype, device=points.device)
    farthest = torch.full((flat.shape[0], 1), start, dtype=torch.long, device=points.device)
    chosen = []
    # Six kernels a step and no host sync (on a GPU the loop is bound by kernel launches, not arithmetic).
    for _ in range(count):
        chosen.append(farthest)
        centres = flat.gather(1, farthest[..., None].expand(-1, -1, flat.shape[-1]))     # B 1 D
        torch.minimum(nearest, (flat - centres).square_().sum(-1), out=nearest)
        farthest = nearest.argmax(-1, keepdim=True)
    return torch.cat(chosen, dim=1).reshape(*batch_shape, count)


def normalize_like_release(points):
    """Centre, scale into the unit sphere, reorder axes to [z, x, y] * [-1, -1, 1] (Point/dataset/modelnet.py)."""
    points = points - points.mean(axis=0)
    points = points / max(np.sqrt((points ** 2).sum(axis=1)).max(), np.finfo(np.float32).tiny)
    return points[:, [2, 0, 1]] * np.array([-1, -1, 1], dtype=np.float32)


def view_rotation(azimuth, elevation):
    """The release's rotate_theta_phi: rotate by -azimuth about z after -elevation about (sin a, -cos a, 0).

    Angles in radians; returns a (3, 3) float32 matrix R, applied as points @ R.T.
    """
    tilt_axis = np.array([np.sin(azimuth), -np.cos(azimuth), 0.0])
    matrix = Rotation.from_rotvec([0.0, 0.0, -azimuth]).as_matrix() @ \
        Rotation.from_rotvec(-elevation * tilt_axis).as_matrix()
    return torch.from_numpy(matrix.astype(np.float32))


class ModelNet40(datasets.SkipsUnreadable):
    """Samples of a ModelNet-40 reader as (points, label); see the module docstring for shapes and transforms.
    A sample or file that cannot be read stops the run with an error naming it, or with skip_corrupt is skipped and
    counted (datasets.SkipsUnreadable)."""

    def __init__(self, reader, is_train, num_points, test_rotations, skip_corrupt=False):
        super().__init__(skip_corrupt)
        for message, samples in reader.unreadable:
            if not skip_corrupt:
                raise datasets.UnreadableSampleError(message)
            self.count_skips(samples, f'Skipping {samples} sample(s): {message}')
        self.reader = reader
        self.classes = reader.classes
        self.is_train = is_train
        self.num_points = num_points
        self.test_rotations = torch.stack([view_rotation(a * np.pi, TEST_ELEVATION * np.pi)
                                           for a in TEST_AZIMUTHS[:test_rotations]])
        self.eval_views = 1 if is_train else test_rotations   # engine.evaluate scores the views

    def __len__(self):
        return len(self.reader)

    def read(self, index):
        raw, label = self.reader[index]
        if not np.isfinite(raw).all():
            row = int(np.nonzero(~np.isfinite(raw).all(axis=1))[0][0])
            raise datasets.UnreadableSampleError(
                f'{self.reader.source(index)}: point {row} (0-based) is {raw[row].tolist()}, not finite. Replace the '
                'file with the original download, or pass --skip_corrupt true to skip unreadable samples.')
        if len(raw) < self.num_points:
            raise ValueError(f'{self.reader.source(index)} has {len(raw)} points, fewer than --pc_points '
                             f'{self.num_points}; lower --pc_points')
        if len(raw) > MAX_EXACT_RANK:
            raise ValueError(f'{self.reader.source(index)} has {len(raw)} points; the random ranks that pick the '
                             f'training subset are exact in float32 only up to {MAX_EXACT_RANK} points: subsample it')
        points = torch.from_numpy(normalize_like_release(raw))
        if not self.is_train:
            points = points[farthest_point_sample(points, self.num_points)]
            placed = torch.einsum('nc,rdc->rnd', points, self.test_rotations)
            ranks = torch.arange(self.num_points, dtype=points.dtype)[:, None].expand(len(placed), -1, -1)
            return torch.cat([placed, points.expand_as(placed), ranks], dim=-1), label
        points = points.roll(-int(torch.randint(len(points), ())), dims=0)   # the random start point comes first
        ranks = torch.randperm(len(points)).to(points.dtype)[:, None]
        azimuth = np.random.uniform(*TRAIN_AZIMUTH_RANGE) * np.pi
        elevation = np.random.uniform(*TRAIN_ELEVATION_RANGE) * np.pi
        placed = points @ view_rotation(azimuth, elevation).T
        scale = np.random.uniform(*SCALE_RANGE, size=3).astype(np.float32)
        shift = np.random.uniform(-TRANSLATION_RANGE, TRANSLATION_RANGE, size=3).astype(np.float32)
        placed = placed * torch.from_numpy(scale) + torch.from_numpy(shift)
        return torch.cat([placed, points, ranks], dim=-1), label


def add_arguments(parser):
    """main.py options of --data_set MODELNET40 (their own block)."""
    group = parser.add_argument_group('point clouds (--data_set MODELNET40; --input_size is the projection grid)')
    group.add_argument('--pc_points', default=4096, type=int, help='points per sample the model sees')
    group.add_argument('--pc_fps_points', default=4800, type=int,
                       help='training: farthest-point sample size (taken in the model, on the training device) that '
                            '--pc_points are drawn from at random')
    group.add_argument('--pc_test_rotations', default=8, type=int, choices=range(1, len(TEST_AZIMUTHS) + 1),
                       metavar='1..8', help='fixed rotations of each test shape in evaluation')
    group.add_argument('--pc_test_score', default='per_rotation', choices=['per_rotation', 'ensemble'],
                       help="reported test accuracy (and best checkpoint): per_rotation, each rotation scored alone "
                            "and the accuracies averaged (the release's); ensemble, the rotations' mean class "
                            'probabilities (higher); both are logged')
    group.add_argument('--pc_views', default=4, type=int, help='projected views (rotated by i*pi/2)')
    group.add_argument('--pc_knn', default=32, type=int, help='neighbours of the point encoder\'s edge features')
    group.add_argument('--pc_encoder_dim', default=64, type=int,
                       help='point-feature and image-head channels (multiple of 4: GroupNorm(4))')
    group.add_argument('--pc_fusion_dim', default=128, type=int, help='multi-view fusion token width')


def build_dataset(is_train, args):
    """(dataset, number of classes) for --data_set MODELNET40."""
    dataset = point_cloud_dataset(open_modelnet40(args.data_path, 'train' if is_train else 'test'), is_train, args)
    return dataset, len(dataset.classes)


def point_cloud_dataset(reader, is_train, args):
    """ModelNet40's samples of any reader (this module's layouts, point_folder's class folders) with main.py's options:
    unreadable samples named or skipped and counted, the test rotations scored as --pc_test_score says."""
    dataset = ModelNet40(reader, is_train, args.pc_points, args.pc_test_rotations,
                         skip_corrupt=getattr(args, 'skip_corrupt_images', False))
    dataset.eval_views_scored = 'each' if args.pc_test_score == 'per_rotation' else 'together'  # engine.evaluate
    return dataset


# ----------------------------------------------------------------------------------------------
# Model: point encoder, projection, image head, multi-view fusion, backbone, classifier
# ----------------------------------------------------------------------------------------------

class PointEncoder(nn.Module):
    """Per-point features: Conv1d 3->8; edge features [f_j - f_i, f_i] over the k nearest neighbours ->
    Conv2d -> GroupNorm(4) -> LeakyReLU(0.2) -> max over neighbours; Conv1d (P2P's ProjEnc)."""

    def __init__(self, dim, neighbours, input_dim=8):
        super().__init__()
        self.neighbours = neighbours
        self.input_trans = nn.Conv1d(3, input_dim, 1)
        self.graph_layer = nn.Sequential(nn.Conv2d(2 * input_dim, dim, 1, bias=False), nn.GroupNorm(4, dim),
                                         nn.LeakyReLU(0.2))
        self.proj_layer = nn.Conv1d(dim, dim, 1)

    def forward(self, points):
        """(B, N, 3) -> (B, N, dim)."""
        with torch.no_grad():
            neighbours = torch.cdist(points, points).topk(self.neighbours, dim=-1, largest=False).indices
        features = self.input_trans(points.transpose(1, 2)).transpose(1, 2)           # B N C
        gathered = features[torch.arange(len(points), device=points.device)[:, None, None], neighbours]  # B N k C
        centre = features[:, :, None].expand_as(gathered)
        edges = torch.cat([gathered - centre, centre], dim=-1).permute(0, 3, 1, 2)     # B 2C N k
        features = self.graph_layer(edges).amax(dim=-1)                                 # B dim N
        return self.proj_layer(features).transpose(1, 2)


def view_rotations(num_views):
    """(V, 3, 3): the release's view i rotates by Euler angles (i pi/2, 0, pi/2) (x, y, z; R = Rx Ry Rz).
    Its translation (0, 0, -1.4) moves points along z only, which the x-y projection ignores."""
    return torch.stack([torch.from_numpy(Rotation.from_euler('XYZ', [i * np.pi / 2, 0, np.pi / 2])
                                         .as_matrix().astype(np.float32)) for i in range(num_views)])


def splat_indices(points, grid):
    """Flat grid index (B, 9N) of each point's 3x3 patch: x-y positions scaled so the larger extent spans
    grid - 3 cells, the patch box centred in the grid (P2P's ProjEnc). `grid` must be even."""
    low, high = points[..., :2].amin(dim=1), points[..., :2].amax(dim=1)                    # B 2
    cell = ((high - low).amax(dim=-1) / (grid - 3)).clamp_min(torch.finfo(points.dtype).tiny)  # B
    cells = torch.floor((points[..., :2] - low[:, None]) / cell[:, None, None]).long()    # B N 2
    offsets = torch.tensor([-1, 0, 1], device=points.device)
    offsets = torch.cartesian_prod(offsets, offsets)                                        # 9 2
    patch = (cells[:, :, None] + offsets + 1).flatten(1, 2)                                 # B 9N 2
    centre = (patch.amax(dim=1) + patch.amin(dim=1)) // 2
    patch = patch + (grid // 2 - centre - 1)[:, None]
    return patch[..., 0] * grid + patch[..., 1]


def splat(features, indices, grid):
    """Sum each point's features (B, N, C) onto its 9 cells (B, 9N) of a (B, C, grid, grid) image with
    `index_add_` (the release used torch_scatter's scatter-sum)."""
    batch, num_points, channels = features.shape
    flat = indices + grid * grid * torch.arange(batch, device=indices.device)[:, None]
    values = features[:, :, None].expand(-1, -1, 9, -1).reshape(-1, channels)
    image = features.new_zeros(batch * grid * grid, channels).index_add_(0, flat.reshape(-1), values)
    return image.view(batch, grid, grid, channels).permute(0, 3, 1, 2)


class FusionTransformerLayer(nn.Module):
    """The release's Transformer(dim, depth=1, heads=8, dim_head=dim, mlp_dim=2 * dim): pre-norm attention with
    8 heads of width `dim` each and no qkv bias, then a pre-norm GELU MLP; timm's layers (timm's ViT Block fixes
    the head width at dim / heads)."""

    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, FUSION_HEADS, attn_head_dim=dim, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, tokens):
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class MultiViewFusion(nn.Module):
    """MultiViewFusionV2 of the release: 7x7 stride-7 conv to tokens, one transformer layer over all views' tokens
    of a sample, nearest upsampling, 3x3 conv + GELU, then a 1x1 conv + GELU over [that, input]."""

    def __init__(self, dim, fusion_dim, num_views):
        super().__init__()
        self.num_views = num_views
        self.tokens = nn.Conv2d(dim, fusion_dim, FUSION_PATCH, stride=FUSION_PATCH, bias=False)
        self.transformer = FusionTransformerLayer(fusion_dim)
        self.expand = nn.Sequential(nn.Conv2d(fusion_dim, dim, 3, padding=1), nn.GELU())
        self.merge = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.GELU())

    def forward(self, images):
        tokens = self.tokens(images)                                                   # (B V) D s s
        size = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)                                     # (B V) S D
        tokens = tokens.reshape(-1, self.num_views * tokens.shape[1], tokens.shape[2])  # B (V S) D
        tokens = self.transformer(tokens).reshape(images.shape[0], -1, tokens.shape[-1])
        tokens = tokens.transpose(1, 2).reshape(images.shape[0], -1, *size)
        fused = self.expand(F.interpolate(tokens, size=images.shape[-2:]))
        return self.merge(torch.cat([fused, images], dim=1))


def gather_points(clouds, indices):
    """clouds (B, N, C) at indices (B, K) -> (B, K, C)."""
    return clouds.gather(1, indices[..., None].expand(-1, -1, clouds.shape[-1]))


class PointCloudClassifier(nn.Module):
    """P2P-style learnable projection around a UniRepLKNet backbone (release: Point/models/p2p_adaptor_lk.py).

    Input (B, N, 7) points (columns: PLACED, ORIGINAL, RANK); clouds of more than `num_points` points are first
    sampled on the input's device (`sample`).
    """

    def __init__(self, backbone, num_classes, grid, num_points, fps_points, num_views=4, neighbours=32, dim=64,
                 fusion_dim=128):
        super().__init__()
        if grid % 2 or grid < FUSION_PATCH:
            raise ValueError(f'--input_size {grid}: the point-cloud grid must be even and at least {FUSION_PATCH}')
        if fps_points < num_points:
            raise ValueError(f'--pc_fps_points {fps_points} < --pc_points {num_points}: the random subset is '
                             'taken from the farthest-point sample, so it needs at least as many points')
        self.grid = grid
        self.num_points = num_points
        self.fps_points = fps_points
        self.num_views = num_views
        self.register_buffer('views', view_rotations(num_views), persistent=False)
        self.register_buffer('mean', torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder = PointEncoder(dim, neighbours)
        self.img_block = nn.Sequential(BasicBlock(dim, dim), nn.Conv2d(dim, dim, 1))
        self.fusion = MultiViewFusion(dim, fusion_dim, num_views)
        self.img_layer = nn.Conv2d(dim, 3, 1)
        self.backbone = backbone
        features = num_views * backbone.num_features
        self.norm = nn.LayerNorm(features)
        self.head = nn.Linear(features, num_classes)

    def project(self, placed, original):
        """(B, N, 3) placed and un-augmented points -> (B V, 3, grid, grid) normalised images."""
        features = self.encoder(original).repeat_interleave(self.num_views, dim=0)    # (B V) N C
        placed = torch.einsum('bnc,vdc->bvnd', placed, self.views).flatten(0, 1)     # (B V) N 3
        images = splat(features, splat_indices(placed, self.grid), self.grid)
        images = self.fusion(self.img_block(images))
        return (torch.sigmoid(self.img_layer(images)) - self.mean) / self.std

    @torch.no_grad()
    def sample(self, clouds):
        """(B, N, 7) -> (B, num_points, 7). Training: the `fps_points` farthest points from point 0 (where the loader
        put the random start), of which the `num_points` with the lowest ranks (a random subset). Eval mode: the
        `num_points` farthest points from point 0. Clouds of exactly `num_points` points pass as they are."""
        count = clouds.shape[1]
        if count == self.num_points:
            return clouds
        if count < self.num_points:
            raise ValueError(f'point clouds of {count} points, fewer than --pc_points {self.num_points}')
        farthest = farthest_point_sample(clouds[..., ORIGINAL], min(self.fps_points, count) if self.training
                                         else self.num_points)
        clouds = gather_points(clouds, farthest)
        if self.training:
            clouds = gather_points(clouds, clouds[..., RANK].topk(self.num_points, dim=1, largest=False).indices)
        return clouds

    def forward(self, clouds):
        clouds = self.sample(clouds)
        maps = self.backbone.forward_features(self.project(clouds[..., PLACED], clouds[..., ORIGINAL]))  # (B V) C h w
        pooled = maps.mean(dim=(-2, -1)).reshape(len(clouds), -1)                        # B (V C), view-major
        return self.head(self.norm(pooled))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {f'backbone.{name}' for name in self.backbone.no_weight_decay()}


def backbone_kwargs(args):
    """The backbone's own classifier is replaced by the adapter's multi-view head."""
    return dict(num_classes=0)


def build_model(args, backbone):
    # The adapter's LayerNorm over all views' pooled features (release: PoolingClsHead) replaces the backbone's own.
    backbone.norm = nn.Identity()
    return PointCloudClassifier(backbone, args.nb_classes, args.input_size, args.pc_points, args.pc_fps_points,
                                num_views=args.pc_views, neighbours=args.pc_knn, dim=args.pc_encoder_dim,
                                fusion_dim=args.pc_fusion_dim)


# The release's ModelNet-40 recipe (configs/point_cloud/): lr 5e-4 without warm-up, label smoothing 0.2, batch 16,
# evaluated every 5th epoch from epoch 100 and after each of the last 30.
# Point clouds cannot be mixed by timm's image mixup/cutmix and get no image augmentation; --input_size is the grid
# the points are projected onto, and the projections are normalised with fixed ImageNet statistics.
SPECS = {'MODELNET40': specs.DataSetSpec(
    'MODELNET40', build_dataset, extra='points',
    defaults={'nb_classes': 40, 'batch_size': 16, 'lr': 5e-4, 'warmup_epochs': 0, 'smoothing': 0.2, 'eval_freq': 5,
              'eval_start_epoch': 100, 'eval_last_epochs': 30},
    unused={**specs.IMAGE_AUGMENTATION_OFF, **specs.IMAGE_EVALUATION_OFF, 'imagenet_default_mean_and_std': None,
            'data_format': 'folder'},
    add_arguments=add_arguments,
    backbone_kwargs=backbone_kwargs, build_model=build_model, mixup=False, backbone_prefix='backbone.',
    eval_views=lambda args: args.pc_test_rotations, image_input=False)}
