"""Kinetics-400 for UniRepLKNet (paper Table 11): clip decoding, frame sampling, the release's augmentations,
5 x 3 test views and the frames-to-image layout, for `--data_set KINETICS400`.

A clip becomes one image: `--video_frames` T (16) frames taken every `--video_frame_stride` (4th) frame, each
`--input_size` S pixels square, laid out on a sqrt(T) x sqrt(T) canvas (S = 224: 896 x 896), `in_chans=3`.

`--video_layout`:
* `grid` (default, the paper's "side by side"): frame t is the tile at row t // sqrt(T), column t % sqrt(T).
* `reshape` (what the release's code does and its 54.8% was trained with, `engine_for_finetuning.py`): a raw
  `reshape(C, sqrt(T) H, sqrt(T) W)` of the (C, T, H, W) clip. Row r of the image holds the rows
  sqrt(T) r .. sqrt(T) r + sqrt(T) - 1 of one frame side by side, so each frame is a (H / sqrt(T)) x (sqrt(T) W)
  strip (56 x 896 at S = 224) of interleaved rows. Use it to evaluate or fine-tune the release's checkpoints.

Training (as `Video/dataset/datasets.py`): a random window of T * stride frames (indices clamped to the clip's
last frame when it is shorter), then the image pipeline of `datasets.build_transform` (RandomResizedCrop,
flip, RandAugment `--aa`, random erasing `--reprob`, ImageNet mean/std) applied with the SAME random draws to
every frame of the clip: one seed is drawn from python's global RNG (seeded per sample by
`datasets.SeededAugmentation`) and every frame is transformed inside `datasets.seeded_random_state(that seed)`.
Evaluation: `--video_test_segments` (5) windows evenly spread over the clip x `--video_test_crops` (3) crops
along the long side after resizing the short side to S; the sample is a (views, C, H, W) stack and
`engine.evaluate` averages the views' class probabilities (the data set's `eval_views` says how many).
Repeated augmentation (the release's x2) is `--repeated_aug 2`: `datasets.RepeatedSamples` and
`utils.RepeatedAugmentationSampler`, in timm's RepeatAugSampler order and resumable mid-epoch.

Data layouts under `--data_path` (checked in this order):
1. `train.csv` / `val.csv` as VideoMAE list files: `<path> <label>` per line, no header, paths relative to
   --data_path or absolute, integer labels.
2. The same two files in the official Kinetics CSV layout: header `label,youtube_id,time_start,time_end,split`;
   the clip of a row is `<split dir>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4` or directly in
   `<split dir>/` (split dir `train/` or `val/`). Class order: `--label_map FILE` (one name per line, e.g. the
   release's `Video/misc/label_map_k400.txt`), else the sorted label names of train.csv.
3. Class-folder trees `train/<class>/<clip>` and `val/<class>/<clip>`; class order: sorted folder names of
   `train/` (or --label_map).
Clips are decoded with PyAV (FFmpeg bundled in its wheel). A listed clip that is missing, or that cannot be
decoded, is an error naming its path; with `--skip_corrupt_images true` it is skipped and counted instead.
"""
import csv
import math
import os
import random

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

import datasets
import specs
from modalities.audio import read_label_map

LIST_FILES = {'train': 'train.csv', 'val': 'val.csv'}
KINETICS_CSV_HEADER = ['label', 'youtube_id', 'time_start', 'time_end', 'split']
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v')
LAYOUTS = ('grid', 'reshape')


# ----------------------------------------------------------------------------------------------
# Frames -> one image
# ----------------------------------------------------------------------------------------------

def grid_side(frames):
    side = math.isqrt(frames)
    if side * side != frames:
        raise ValueError(f'--video_frames {frames} must be a square number (4, 9, 16, ...): the frames are laid '
                         'out on a square canvas')
    return side


def frames_to_image(clip, layout):
    """(T, C, H, W) frames -> (C, sqrt(T) H, sqrt(T) W) image in the `grid` or `reshape` layout (see above)."""
    frames, channels, height, width = clip.shape
    side = grid_side(frames)
    if layout == 'grid':
        return clip.reshape(side, side, channels, height, width).permute(2, 0, 3, 1, 4).reshape(
            channels, side * height, side * width)
    if layout == 'reshape':
        return clip.permute(1, 0, 2, 3).reshape(channels, side * height, side * width)
    raise ValueError(f"--video_layout must be one of {LAYOUTS}, got '{layout}'")


# ----------------------------------------------------------------------------------------------
# Decoding and frame sampling
# ----------------------------------------------------------------------------------------------

def decode_frames(path):
    """All frames of the first video stream of `path` as PyAV frames (converted to pixels only when used)."""
    import av  # the 'video' extra (specs.require checks it before any data is read)
    try:
        with av.open(path) as container:
            frames = list(container.decode(video=0))
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise RuntimeError(f"Cannot decode video '{path}' ({type(err).__name__}: {err}). Replace or delete the "
                           "clip, or pass --skip_corrupt_images true to skip undecodable clips.") from err
    if not frames:
        raise RuntimeError(f"Cannot decode video '{path}': it has no video frames. Replace or delete the clip, or "
                           "pass --skip_corrupt_images true to skip undecodable clips.")
    return frames


def window(start, num_frames, frames, stride):
    """Indices start, start + stride, ... (frames of them), clamped to the clip's last frame."""
    return [min(start + i * stride, num_frames - 1) for i in range(frames)]


def training_window(num_frames, frames, stride):
    """A window of frames * stride at a random start (python's global RNG), as VideoMAE's training sampler."""
    span = frames * stride
    start = random.randint(0, num_frames - span) if num_frames > span else 0
    return window(start, num_frames, frames, stride)


def test_windows(num_frames, frames, stride, segments):
    """`segments` windows with starts evenly spread over the clip, as VideoMAE's test sampler."""
    slack = max(num_frames - frames * stride, 0)
    step = slack / (segments - 1) if segments > 1 else 0
    return [window(int(step * k), num_frames, frames, stride) for k in range(segments)]


def crop_offsets(length, size, crops):
    """Start offsets of `crops` windows of `size` spread evenly over `length` (one crop: centred)."""
    if crops == 1:
        return [(length - size) // 2]
    return [int((length - size) * k / (crops - 1)) for k in range(crops)]


def spatial_crops(clip, size, crops):
    """Resize the short side of (T, C, H, W) to `size`, then `crops` size x size crops evenly along the long
    side (VideoMAE's test crops)."""
    clip = F.resize(clip, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    height, width = clip.shape[-2:]
    if height > width:
        return [clip[..., top:top + size, :size] for top in crop_offsets(height, size, crops)]
    return [clip[..., :size, left:left + size] for left in crop_offsets(width, size, crops)]


# ----------------------------------------------------------------------------------------------
# Data layouts
# ----------------------------------------------------------------------------------------------

def resolve(root, path):
    return path if os.path.isabs(path) else os.path.join(root, path)


def read_list_file(root, list_path):
    """VideoMAE list file: [(path, label)] from '<path> <label>' lines."""
    samples = []
    with open(list_path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise ValueError(f"{list_path}, line {number}: expected '<path> <integer label>' (VideoMAE list "
                                 f"file) or the Kinetics CSV header {','.join(KINETICS_CSV_HEADER)}; got "
                                 f"{line.strip()!r}")
            samples.append((resolve(root, parts[0]), int(parts[1])))
    return samples


def kinetics_csv_rows(list_path):
    with open(list_path, newline='') as f:
        return list(csv.DictReader(f))


def kinetics_clip_path(root, split, row):
    """Where a Kinetics CSV row's clip lives: <split>/<label>/<name> or <split>/<name>."""
    name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
    candidates = [os.path.join(root, split, row['label'], name), os.path.join(root, split, name)]
    return next((path for path in candidates if os.path.isfile(path)), candidates[0])


def is_kinetics_csv(list_path):
    with open(list_path, newline='') as f:
        return next(csv.reader(f), [])[:len(KINETICS_CSV_HEADER)] == KINETICS_CSV_HEADER


def folder_classes(folder):
    return sorted(entry for entry in os.listdir(folder) if os.path.isdir(os.path.join(folder, entry)))


def folder_samples(folder, index):
    samples = []
    for name in folder_classes(folder):
        if name not in index:
            raise ValueError(f"Class folder '{os.path.join(folder, name)}' is not a class of the training set "
                             "(or --label_map).")
        for file in sorted(os.listdir(os.path.join(folder, name))):
            if file.lower().endswith(VIDEO_EXTENSIONS):
                samples.append((os.path.join(folder, name, file), index[name]))
    return samples


def clip_samples(root, split, label_map=None):
    """([(path, label)], nb_classes or None when the list file only has integer labels) for a split."""
    list_path = os.path.join(root, LIST_FILES[split])
    train_list = os.path.join(root, LIST_FILES['train'])
    names = read_label_map(label_map) if label_map else None
    if os.path.isfile(list_path) and is_kinetics_csv(list_path):
        if names is None:
            source = train_list if os.path.isfile(train_list) else list_path
            names = sorted({row['label'] for row in kinetics_csv_rows(source)})
        index = {name: i for i, name in enumerate(names)}
        samples = []
        for row in kinetics_csv_rows(list_path):
            if row['label'] not in index:
                raise ValueError(f"{list_path}: label '{row['label']}' is not a class of "
                                 f"{label_map or train_list}.")
            samples.append((kinetics_clip_path(root, split, row), index[row['label']]))
        return samples, len(names)
    if os.path.isfile(list_path):
        return read_list_file(root, list_path), len(names) if names else None
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
        if names is None:
            train_folder = os.path.join(root, 'train')
            names = folder_classes(train_folder if os.path.isdir(train_folder) else folder)
        return folder_samples(folder, {name: i for i, name in enumerate(names)}), len(names)
    raise FileNotFoundError(
        f"No {split} clips under '{root}': expected the list file '{list_path}' (VideoMAE '<path> <label>' lines "
        f"or the Kinetics CSV) or the class-folder tree '{folder}/<class>/<clip>.mp4'.")


def check_classes(samples, nb_classes, found, is_train, where):
    """The number of classes of the split against --nb_classes."""
    labels = [label for _, label in samples]
    if not labels:
        raise ValueError(f'{where}: no clips found')
    if found is None:  # integer labels only: the training list must use every class
        found = max(labels) + 1 if is_train else nb_classes
    if found != nb_classes or min(labels) < 0 or max(labels) >= nb_classes:
        raise ValueError(f"{where} has {found} classes (labels {min(labels)}..{max(labels)}) but --nb_classes is "
                         f"{nb_classes}. Pass --nb_classes {found}.")


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

class VideoClips(datasets.SkipsUnreadable):
    """Clips as (C, sqrt(T) S, sqrt(T) S) training images or (views, C, ...) test stacks; see module docstring."""

    def __init__(self, samples, classes_count, train, frame_transform, args):
        super().__init__(args.skip_corrupt_images)
        missing = [path for path, _ in samples if not os.path.isfile(path)]
        if missing and not self.skip_corrupt:
            raise FileNotFoundError(f"{len(missing)} listed clip(s) do not exist, e.g. '{missing[0]}'. Fix the "
                                    "list/--data_path, or pass --skip_corrupt_images true to skip them.")
        if missing:
            self.count_skips(len(missing), f'Skipping {len(missing)} missing clip(s), e.g. {missing[0]}')
        absent = set(missing)
        self.samples = [(path, label) for path, label in samples if path not in absent]
        self.classes = list(range(classes_count))
        self.train = train
        self.frame_transform = frame_transform
        self.frames = args.video_frames
        self.stride = args.video_frame_stride
        self.layout = args.video_layout
        self.size = args.input_size
        self.segments = args.video_test_segments
        self.crops = args.video_test_crops
        grid_side(self.frames)
        self.eval_views = 1 if train else self.segments * self.crops

    def __len__(self):
        return len(self.samples)

    def read(self, index):
        path, label = self.samples[index]
        frames = decode_frames(path)
        if self.train:
            return self.training_image(frames), label
        return self.test_views(frames), label

    def training_image(self, frames):
        indices = training_window(len(frames), self.frames, self.stride)
        clip_seed = random.getrandbits(32)
        transformed = []
        for i in indices:
            with datasets.seeded_random_state(clip_seed):  # same crop/flip/RandAugment/erasing for every frame
                transformed.append(self.frame_transform(frames[i].to_image()))
        return frames_to_image(torch.stack(transformed), self.layout)

    def test_views(self, frames):
        views = []
        for indices in test_windows(len(frames), self.frames, self.stride, self.segments):
            clip = torch.from_numpy(np.stack([frames[i].to_ndarray(format='rgb24') for i in indices]))
            clip = clip.permute(0, 3, 1, 2)  # (T, C, H, W) uint8
            for crop in spatial_crops(clip, self.size, self.crops):
                views.append(frames_to_image(self.frame_transform(crop), self.layout))
        return torch.stack(views)


class NormaliseFrames:
    """uint8 (T, C, H, W) -> float, normalised with the image mean/std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, clip):
        return (clip.float() / 255.0 - self.mean) / self.std


def add_arguments(parser):
    """main.py options of --data_set KINETICS400 (their own block; --label_map is declared with the audio options)."""
    group = parser.add_argument_group('video (--data_set KINETICS400; --input_size is the size of one frame)')
    group.add_argument('--video_frames', type=int, default=16, help='frames per clip (a square)')
    group.add_argument('--video_frame_stride', type=int, default=4, help='take every n-th frame')
    group.add_argument('--video_layout', default='grid', choices=LAYOUTS,
                       help="frames -> image: 'grid' tiles (the paper) or 'reshape' (the release)")
    group.add_argument('--video_test_segments', type=int, default=5, help='test windows per clip')
    group.add_argument('--video_test_crops', type=int, default=3, help='test crops per window')


def build_dataset(is_train, args):
    if args.input_size <= 32:
        raise ValueError(f'--input_size {args.input_size} is the size of one frame; 32 or less takes the image '
                         'pipeline\'s small-input path (RandomCrop without resizing), which does not match the video '
                         'test views (short side resized). Pass --input_size 33 or more (the recipe: 224).')
    split = 'train' if is_train else 'val'
    samples, found = clip_samples(args.data_path, split, args.label_map)
    check_classes(samples, args.nb_classes, found, is_train, f"'{args.data_path}' ({split})")
    if is_train:
        frame_transform = datasets.build_transform(True, args)
    else:
        frame_transform = NormaliseFrames(*datasets.normalization(args))
    return VideoClips(samples, args.nb_classes, is_train, frame_transform, args), args.nb_classes


# The release's Kinetics-400 fine-tuning recipe (Video/scripts, configs/video/): 90 epochs, lr 1e-3 with 5 warm-up
# epochs, layer decay 0.75, RandAugment rand-m7-n4-mstd0.5-inc1, repeated augmentation x2, batch 8 per GPU; the
# image recipe's mixup/cutmix, smoothing and random erasing. The test views set their own sizes (no --crop_pct).
SPECS = {'KINETICS400': specs.DataSetSpec(
    'KINETICS400', build_dataset, extra='video',
    defaults={'nb_classes': 400, 'batch_size': 8, 'epochs': 90, 'lr': 1e-3, 'warmup_epochs': 5, 'layer_decay': 0.75,
              'aa': 'rand-m7-n4-mstd0.5-inc1', 'repeated_aug': 2},
    unused={**specs.IMAGE_EVALUATION_OFF, 'data_format': 'folder'},
    options=('label_map', 'video_frames', 'video_frame_stride', 'video_layout', 'video_test_segments',
             'video_test_crops'),
    add_arguments=add_arguments,
    eval_views=lambda args: args.video_test_segments * args.video_test_crops, image_input=False)}
