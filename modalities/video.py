"""Kinetics-400 for UniRepLKNet (paper Table 11): clip decoding, frame sampling, the release's augmentations,
5 x 3 test views and the frames-to-image layout, for `--data_set KINETICS400`.

A clip becomes one image: `--video_frames` T (16) frames taken every `--video_frame_stride` (4th) frame, each
`--input_size` S pixels square, laid out on a sqrt(T) x sqrt(T) canvas (S = 224: 896 x 896), `in_chans=3`.

`--video_layout`:
* `reshape` (default; what the release's code does and its 54.8% was trained with, `engine_for_finetuning.py`): a raw
  `reshape(C, sqrt(T) H, sqrt(T) W)` of the (C, T, H, W) clip. Row r of the image holds the rows
  sqrt(T) r .. sqrt(T) r + sqrt(T) - 1 of one frame side by side, so each frame is a (H / sqrt(T)) x (sqrt(T) W)
  strip (56 x 896 at S = 224) of interleaved rows. The release's checkpoints need it.
* `grid` (the paper's "side by side"): frame t is the tile at row t // sqrt(T), column t % sqrt(T).

Training (as `Video/dataset/datasets.py`): T frame indices spread by linspace over a random window of
T * stride frames (clamped to the clip's last frame when it is shorter), then `--video_train_transform release`
(default: RandAugment `--aa` on the full frames, RandomResizedCrop (bilinear), flip, random erasing `--reprob`) or
`image` (the image pipeline of `datasets.build_transform`, RandomResizedCrop first), applied with the SAME random
draws to every frame of the clip: one seed is drawn from python's global RNG (seeded per sample by
`datasets.SeededAugmentation`) and every frame is transformed inside `datasets.seeded_random_state(that seed)`.
Evaluation: `--video_test_segments` (5) windows evenly spread over the clip x `--video_test_crops` (3) crops
along the long side after resizing the short side to S; the sample is a (views, C, H, W) stack and
`engine.evaluate` averages the views' class probabilities (the data set's `eval_views` says how many).
Repeated augmentation (the release's x2) is `--repeated_aug 2`: with `--repeated_aug_scope batch` (default, the
release's `num_sample`) a video's copies share one batch (`utils.RepeatedInBatchSampler`); `ranks` spreads them in
timm's RepeatAugSampler order. Both resume mid-epoch.

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
decoded, is an error naming its path; with `--skip_corrupt true` it is skipped and counted instead.
"""
import csv
import math
import os
import random

import numpy as np
import torch
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_pil_interp
from torchvision import transforms
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


def image_to_frames(image, frames, layout):
    """The inverse of frames_to_image: (..., C, sqrt(T) H, sqrt(T) W) -> (..., T, C, H, W)."""
    *lead, channels, height, width = image.shape
    side = grid_side(frames)
    frame_height, frame_width = height // side, width // side
    if layout == 'grid':
        tiles = image.reshape(*lead, channels, side, frame_height, side, frame_width)
        return tiles.movedim((-4, -2), (-5, -4)).reshape(*lead, frames, channels, frame_height, frame_width)
    if layout == 'reshape':
        return image.reshape(*lead, channels, frames, frame_height, frame_width).transpose(-4, -3)
    raise ValueError(f"--video_layout must be one of {LAYOUTS}, got '{layout}'")


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
        raise datasets.UnreadableSampleError(
            f"Cannot decode video '{path}' ({type(err).__name__}: {err}). Replace or delete the clip, or pass "
            "--skip_corrupt true to skip unreadable samples.") from err
    if not frames:
        raise datasets.UnreadableSampleError(
            f"Cannot decode video '{path}': it has no video frames. Replace or delete the clip, or pass "
            "--skip_corrupt true to skip unreadable samples.")
    return frames


def training_window(num_frames, frames, stride):
    """The release's training indices (Video/dataset/datasets.py `load_video`, one segment): a window of
    frames * stride at a random end (python's global RNG), `frames` indices spread over it with linspace (a stride of
    64 / 15 = 4.27 for 16 frames every 4th), the last clamped inside the window; a clip no longer than the window
    gives num_frames // stride indices over the whole clip, then its last frame repeated."""
    span = frames * stride
    if num_frames > span:
        end = random.randint(span, num_frames - 1)
        indices = np.linspace(end - span, end, num=frames)
        return np.clip(indices, end - span, end - 1).astype(np.int64).tolist()
    spread = np.linspace(0, num_frames, num=num_frames // stride)
    indices = np.concatenate([spread, np.full(frames - len(spread), num_frames)])
    return np.clip(indices, 0, num_frames - 1).astype(np.int64).tolist()


def test_windows(num_frames, frames, stride, segments):
    """`segments` windows of every stride-th frame (the release's test sampler): the clip's frames 0, stride, 2 stride,
    ... (the last repeated up to `frames`), windows starting at evenly spread positions of that list."""
    strided = list(range(0, num_frames, stride))
    strided += strided[-1:] * (frames - len(strided))
    step = (len(strided) - frames) / (segments - 1) if segments > 1 else 0
    return [strided[int(step * k):int(step * k) + frames] for k in range(segments)]


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
                                 f"{line.strip()!r}. Add the label or delete the line.")
            samples.append((resolve(root, parts[0]), int(parts[1])))
    return samples


def kinetics_csv_rows(list_path):
    """The rows of a Kinetics CSV; a row without a label, a youtube_id or integer times is an error naming its
    line."""
    rows = []
    with open(list_path, newline='') as f:
        reader = csv.DictReader(f)
        for row in reader:
            fields = [row.get(name) for name in KINETICS_CSV_HEADER[:4]]
            if not all(fields) or not all(str(value).isdigit() for value in fields[2:]):
                raise ValueError(f"{list_path}, line {reader.line_num}: expected "
                                 f"{','.join(KINETICS_CSV_HEADER)} with a label, a youtube_id and integer times; "
                                 f"got {','.join(value or '' for value in fields)}. Fix or delete the line.")
            rows.append(row)
    return rows


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
        self.samples = self.keep_existing(samples, 'clip')
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


def release_frame_transform(args):
    """The release's training augmentation of one frame (Video/dataset/datasets.py `_aug_frame`): RandAugment `--aa`
    on the full-resolution frame (timm's RandAugment with the release's hparams: translate 0.45 x --input_size
    pixels, --train_interpolation, timm's grey fill), ToTensor, mean/std, RandomResizedCrop to --input_size (scale
    0.08-1, ratio 3/4-4/3, bilinear without antialiasing, as its torch.nn.functional.interpolate), horizontal flip,
    random erasing (--reprob, --remode, --recount). VideoClips applies it with the same random draws to every frame.
    """
    mean, std = datasets.normalization(args)
    steps = []
    if str(args.aa).lower() not in ('', 'none'):
        hparams = {'translate_const': int(args.input_size * 0.45),
                   'interpolation': str_to_pil_interp(args.train_interpolation)}
        steps.append(rand_augment_transform(args.aa, hparams))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std),
              transforms.RandomResizedCrop(args.input_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                           interpolation=InterpolationMode.BILINEAR, antialias=False),
              transforms.RandomHorizontalFlip()]
    if args.reprob > 0:
        steps.append(RandomErasing(args.reprob, mode=args.remode, max_count=args.recount, device='cpu'))
    return transforms.Compose(steps)


class FrameMixing:
    """Mixup/CutMix of frame images as the release mixes clips (engine_for_finetuning.py: timm's Mixup on the
    (B, C * T, H, W) view of the batch, before its reshape): a CutMix box is the same region of every frame, in
    either --video_layout. Wraps a timm Mixup; `--video_mix canvas` uses that Mixup on the whole image instead."""

    def __init__(self, mixup, frames, layout):
        self.mixup = mixup
        self.frames = frames
        self.layout = layout

    def __call__(self, images, targets):
        clips = image_to_frames(images, self.frames, self.layout)  # (B, T, C, H, W)
        batch, frames, channels, height, width = clips.shape
        stacked = clips.transpose(1, 2).reshape(batch, channels * frames, height, width)
        mixed, targets = self.mixup(stacked, targets)
        clips = mixed.reshape(batch, channels, frames, height, width).transpose(1, 2)
        return torch.stack([frames_to_image(clip, self.layout) for clip in clips]), targets


def batch_mixing(mixup, args):
    """The spec's batch mixing (main.build_mixup): the Mixup/CutMix of --video_mix."""
    return FrameMixing(mixup, args.video_frames, args.video_layout) if args.video_mix == 'frame' else mixup


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
    group.add_argument('--video_layout', default='reshape', choices=LAYOUTS,
                       help="frames -> image: 'reshape' (the release's code, default) or 'grid' tiles (the paper's "
                            'side-by-side description)')
    group.add_argument('--video_test_segments', type=int, default=5, help='test windows per clip')
    group.add_argument('--video_test_crops', type=int, default=3, help='test crops per window')
    group.add_argument('--video_train_transform', default='release', choices=['release', 'image'],
                       help="training augmentation: 'release' (Video/dataset/datasets.py: RandAugment on the full "
                            "frames, then RandomResizedCrop (bilinear), flip, erasing) or 'image' (the image "
                            'pipeline: RandomResizedCrop with --train_interpolation first, RandAugment after)')
    group.add_argument('--video_mix', default='frame', choices=['frame', 'canvas'],
                       help="Mixup/CutMix: 'frame' (the release: on the (B, C*T, H, W) clips, a CutMix box is the "
                            "same region of every frame) or 'canvas' (on the whole frame image)")


def build_dataset(is_train, args):
    if args.input_size <= 32:
        raise ValueError(f'--input_size {args.input_size} is the size of one frame; 32 or less takes the image '
                         'pipeline\'s small-input path (RandomCrop without resizing), which does not match the video '
                         'test views (short side resized). Pass --input_size 33 or more (the recipe: 224).')
    split = 'train' if is_train else 'val'
    samples, found = clip_samples(args.data_path, split, args.label_map)
    check_classes(samples, args.nb_classes, found, is_train, f"'{args.data_path}' ({split})")
    if is_train and args.video_train_transform == 'release':
        frame_transform = release_frame_transform(args)
    elif is_train:
        frame_transform = datasets.build_transform(True, args)
    else:
        frame_transform = NormaliseFrames(*datasets.normalization(args))
    return VideoClips(samples, args.nb_classes, is_train, frame_transform, args), args.nb_classes


# The release's Kinetics-400 fine-tuning recipe (Video/scripts, configs/video/): 90 epochs, lr 1e-3 down to 2.5e-7
# after 5 warm-up epochs, layer decay 0.75, RandAugment rand-m7-n4-mstd0.5-inc1, every clip twice per step
# (--repeated_aug 2 in one batch), 4 clips x 2 accumulation steps per GPU; the image recipe's mixup/cutmix (per frame,
# --video_mix), smoothing and random erasing. The test views set their own sizes (no --crop_pct).
SPECS = {'KINETICS400': specs.DataSetSpec(
    'KINETICS400', build_dataset, extra='video',
    defaults={'nb_classes': 400, 'batch_size': 4, 'update_freq': 2, 'epochs': 90, 'lr': 1e-3, 'min_lr': 2.5e-7,
              'warmup_epochs': 5, 'layer_decay': 0.75, 'aa': 'rand-m7-n4-mstd0.5-inc1', 'repeated_aug': 2},
    unused={**specs.IMAGE_EVALUATION_OFF, 'data_format': 'folder'},
    options=('label_map',),
    add_arguments=add_arguments, batch_mixing=batch_mixing,
    eval_views=lambda args: args.video_test_segments * args.video_test_crops, image_input=False)}
