"""Speech Commands V2 for UniRepLKNet (paper Table 10): WAV reading, the Kaldi filterbank, the release's training
augmentations and the v0.02 folder layout, for `--data_set SPEECHCOMMANDS`.

What the model sees (as `Audio/src/dataloader.py` and `ast_models.py` of the release): a 16 kHz mono waveform with
its mean removed -> Kaldi-compatible log-mel filterbank (128 mel bins, 25 ms Hanning window, 10 ms shift, no
energy, dither 0: 98 frames per second) -> zero-padded or cut to 128 frames -> (training) SpecAugment ->
normalised as (x + 6.845978) / (2 * 5.5654526) -> (training) small uniform noise and a roll of up to +-10 frames
-> a (1, 128 mel, 128 frames) tensor: height is frequency, width is time, `in_chans=1`.

Training only, before the filterbank: waveform mixup with probability `--audio_mixup_prob` (0.6) and
lambda ~ Beta(10, 10) with another random training file; the target is then a soft label vector
(lambda, 1 - lambda). Training targets are always float vectors (one-hot when not mixed), which the release's
BCE loss (`--loss bce`) and timm's soft-target losses take. All randomness uses python `random`, numpy and
torch's global RNGs, which `datasets.SeededAugmentation` seeds per (seed, epoch, index): a resumed run
repeats it exactly.

Folder layout (Speech Commands v0.02 as downloaded and extracted)::

    <data_path>/<word>/<speaker>_nohash_<n>.wav     35 word folders
    <data_path>/_background_noise_/                 not a class (ignored)
    <data_path>/validation_list.txt                 relative paths, e.g. "right/bb05582b_nohash_3.wav"
    <data_path>/testing_list.txt
    training = every other .wav in the word folders

Evaluation reads the validation list while training and the testing list with `--eval true` (the table's metric
is top-1 on the testing list); `--audio_eval_list validation|testing` chooses explicitly.

Class order: the word folders sorted alphabetically (class i = i-th name in `sorted(word folders)`). The
release's AST label CSV (`index,mid,display_name`, not in its repository) uses another order; pass such a CSV or
a text file with one word per line as `--label_map FILE` to use its order (needed to evaluate the release's
checkpoints).
"""
import csv
import math
import os
import random
import warnings

import numpy as np
import torch
from scipy.signal import resample_poly

import datasets
import specs

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_FRAMES = 128
# Normalisation statistics of Speech Commands V2 from the release (Audio/egs/speechcommands/run_sc.sh).
FBANK_MEAN = -6.845978
FBANK_STD = 5.5654526
FREQ_MASK = 48
TIME_MASK = 48
MAX_ROLL_FRAMES = 10
MIXUP_BETA = 10.0
BACKGROUND_NOISE_FOLDER = '_background_noise_'
LIST_FILES = {'validation': 'validation_list.txt', 'testing': 'testing_list.txt'}


class KaldiFbank:
    """The release's `torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning',
    num_mel_bins=128, dither=0, frame_shift=10)` on a float waveform in [-1, 1].

    lhotse's `Wav2LogFilterBank` (a maintained torch port of Kaldi's fbank) computes it. kaldi-native-fbank cannot:
    like Kaldi it refuses 128 mel bins at 16 kHz, because the lowest triangles fall between FFT bins; torchaudio
    (and lhotse) keep such a bin empty, at log(float32 eps), and the release's models were trained that way.
    htk_compat only moves the energy coefficient, which use_energy=False leaves out.
    """

    def __init__(self):
        from lhotse.features.kaldi.layers import Wav2LogFilterBank
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Setting snip_edges=True')  # Kaldi's framing is wanted here
            self.layer = Wav2LogFilterBank(
                sampling_rate=SAMPLE_RATE, frame_length=0.025, frame_shift=0.01, window_type='hanning',
                snip_edges=True, dither=0.0, num_filters=NUM_MEL_BINS, low_freq=20.0, high_freq=0.0,
                use_energy=False)

    @torch.no_grad()
    def __call__(self, waveform):
        """(samples,) float32 tensor -> (frames, NUM_MEL_BINS) log-mel energies."""
        return self.layer(waveform[None])[0]


def read_wav(path):
    """Mono float32 waveform at 16 kHz. Other rates are resampled (scipy's polyphase filter); multi-channel files
    keep channel 0, as the release's kaldi.fbank does."""
    import soundfile  # the 'audio' extra (specs.require checks it before any data is read)
    fix = 'Replace or delete the file, or pass --skip_corrupt true to skip unreadable samples.'
    try:
        samples, rate = soundfile.read(path, dtype='float32', always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise datasets.UnreadableSampleError(f"Cannot read audio file '{path}' ({err}). {fix}") from err
    if len(samples) == 0:
        raise datasets.UnreadableSampleError(f"Audio file '{path}' holds no samples (zero length). {fix}")
    if not np.isfinite(samples).all():
        raise datasets.UnreadableSampleError(f"Audio file '{path}' holds non-finite samples (NaN or inf). {fix}")
    samples = samples[:, 0]
    if rate != SAMPLE_RATE:
        divisor = math.gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(samples))


def fit_frames(fbank, frames=TARGET_FRAMES):
    """Zero-pad or cut (time, mel) to `frames` time steps."""
    if fbank.shape[0] >= frames:
        return fbank[:frames]
    return torch.nn.functional.pad(fbank, (0, 0, 0, frames - fbank.shape[0]))


def mask_band(fbank, max_width, dim):
    """SpecAugment mask of torchaudio's FrequencyMasking/TimeMasking(max_width): width ~ U[0, max_width), start
    ~ U[0, size - width), set to 0. Written here because torchaudio would pin an older torch."""
    size = fbank.shape[dim]
    width = int(torch.rand(()) * min(max_width, size))
    start = int(torch.rand(()) * (size - width))
    fbank.narrow(dim, start, width).zero_()
    return fbank


def normalise(fbank):
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


def waveform_mixup(waveform, other):
    """The release's mixup: both mean-removed, `other` cut or zero-padded to `waveform`'s length,
    lambda ~ Beta(10, 10) from numpy's global RNG. Returns (mixed waveform, lambda)."""
    waveform = waveform - waveform.mean()
    other = other - other.mean()
    if other.shape[0] >= waveform.shape[0]:
        other = other[:waveform.shape[0]]
    else:
        other = torch.nn.functional.pad(other, (0, waveform.shape[0] - other.shape[0]))
    lam = float(np.random.beta(MIXUP_BETA, MIXUP_BETA))
    mixed = lam * waveform + (1 - lam) * other
    return mixed - mixed.mean(), lam


def read_label_map(path):
    """Class names in the order of a label file: AST's CSV (a `display_name` column) or one name per line."""
    with open(path, newline='') as f:
        text = f.read()
    first_line = text.splitlines()[0] if text.strip() else ''
    if 'display_name' in first_line:
        names = [row['display_name'].strip() for row in csv.DictReader(text.splitlines())]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"--label_map {path}: repeated class names")
    return names


def speech_commands_files(root, split, label_map=None):
    """(files, classes): [(path, class index)] of a v0.02 split ('training', 'validation', 'testing')."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Speech Commands folder not found: '{root}'. Pass the extracted v0.02 folder "
                                "(word folders, validation_list.txt, testing_list.txt) as --data_path.")
    missing = [name for name in LIST_FILES.values() if not os.path.isfile(os.path.join(root, name))]
    words = sorted(entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))
                   and entry != BACKGROUND_NOISE_FOLDER and not entry.startswith('.'))
    if missing or not words:
        what = ', '.join(missing + ([] if words else ['word folders (<word>/<speaker>_nohash_<n>.wav)']))
        raise FileNotFoundError(f"'{root}' is not a Speech Commands v0.02 folder: missing {what}. Download and "
                                "extract speech_commands_v0.02.tar.gz into --data_path.")
    classes = read_label_map(label_map) if label_map else words
    unknown = sorted(set(words) - set(classes))
    if unknown:
        raise ValueError(f"Word folders {unknown} of '{root}' are not in --label_map {label_map}.")
    index = {name: i for i, name in enumerate(classes)}

    held_out = {name: read_list_file(os.path.join(root, list_file), index) for name, list_file in LIST_FILES.items()}
    if split == 'training':
        excluded = {rel for rel, _ in held_out['validation'] + held_out['testing']}
        listed = [(f'{word}/{name}', index[word]) for word in words
                  for name in sorted(os.listdir(os.path.join(root, word)))
                  if name.endswith('.wav') and f'{word}/{name}' not in excluded]
    else:
        listed = held_out[split]
    return [(os.path.join(root, rel), label) for rel, label in listed], classes


def read_list_file(path, index):
    """[(relative path, class index)] of a validation/testing list: one '<word>/<file>.wav' per line, the word
    folder being the label. A line without a word folder, or whose word is not a class, is an error naming it."""
    listed = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            rel = line.strip()
            if not rel:
                continue
            word, _, name = rel.partition('/')
            if not name or '/' in name:
                raise ValueError(f"{path}, line {number}: expected '<word>/<speaker>_nohash_<n>.wav' (the word folder "
                                 f"is the label); got {rel!r}. Fix or delete the line.")
            if word not in index:
                raise ValueError(f"{path}, line {number}: '{rel}' is in the word folder '{word}', which is not a "
                                 f"class ({len(index)} classes: the word folders, or --label_map). Fix or delete the "
                                 "line.")
            listed.append((rel, index[word]))
    return listed


class SpeechCommands(datasets.SkipsUnreadable):
    """One split of Speech Commands v0.02 as (1, 128, 128) normalised filterbanks; see the module docstring."""

    def __init__(self, root, split, train, mixup_prob=0.0, label_map=None, skip_corrupt=False):
        super().__init__(skip_corrupt)
        samples, self.classes = speech_commands_files(root, split, label_map)
        self.samples = self.keep_existing(samples, 'audio file')
        self.train = train
        self.mixup_prob = mixup_prob
        self.fbank = KaldiFbank()

    def __len__(self):
        return len(self.samples)

    def read(self, index):
        path, label = self.samples[index]
        waveform = read_wav(path)
        if not self.train:
            return self.features(waveform - waveform.mean()), label
        target = torch.zeros(len(self.classes))
        if random.random() < self.mixup_prob:
            partner_path, partner_label = self.samples[random.randint(0, len(self.samples) - 1)]
            waveform, lam = waveform_mixup(waveform, read_wav(partner_path))
            target[label] += lam
            target[partner_label] += 1 - lam
        else:
            waveform = waveform - waveform.mean()
            target[label] = 1.0
        return self.features(waveform), target

    def features(self, waveform):
        fbank = fit_frames(self.fbank(waveform))  # (time, mel)
        if self.train:
            fbank = mask_band(mask_band(fbank.clone(), FREQ_MASK, dim=1), TIME_MASK, dim=0)
        fbank = normalise(fbank)
        if self.train:
            fbank = fbank + torch.rand(fbank.shape) * np.random.rand() / 10
            fbank = torch.roll(fbank, np.random.randint(-MAX_ROLL_FRAMES, MAX_ROLL_FRAMES), dims=0)
        return fbank.T.unsqueeze(0).contiguous()  # (1, mel, time)


def eval_list(args):
    """'validation' while training, 'testing' for --eval, unless --audio_eval_list names one."""
    if args.audio_eval_list != 'auto':
        return args.audio_eval_list
    return 'testing' if args.eval else 'validation'


def add_arguments(parser):
    """main.py options of --data_set SPEECHCOMMANDS (their own block; --label_map is KINETICS400's too)."""
    group = parser.add_argument_group('audio (--data_set SPEECHCOMMANDS)')
    group.add_argument('--label_map', default=None, type=str, metavar='FILE',
                       help='class order of SPEECHCOMMANDS / KINETICS400: one class name per line (or AST\'s '
                            'label CSV); default: sorted names')
    group.add_argument('--audio_mixup_prob', type=float, default=0.6,
                       help='probability of mixing a training waveform with another one (lambda ~ Beta(10, 10))')
    group.add_argument('--audio_eval_list', default='auto', choices=['auto', 'validation', 'testing'],
                       help='evaluation list: auto = validation_list.txt while training, testing_list.txt with '
                            '--eval true')


def build_dataset(is_train, args):
    split = 'training' if is_train else eval_list(args)
    dataset = SpeechCommands(args.data_path, split, train=is_train,
                             mixup_prob=args.audio_mixup_prob if is_train else 0.0, label_map=args.label_map,
                             skip_corrupt=args.skip_corrupt_images)
    if len(dataset.classes) != args.nb_classes:
        raise ValueError(f"'{args.data_path}' has {len(dataset.classes)} word classes but --nb_classes is "
                         f"{args.nb_classes}. Pass --nb_classes {len(dataset.classes)}.")
    return dataset, len(dataset.classes)


# The release's Speech Commands recipe (Audio/egs/speechcommands/run_sc.sh, configs/audio/): Adam with betas
# (0.95, 0.999), lr 2.5e-4 times 0.85 per epoch from epoch 5, BCE without smoothing, 100 epochs of batch 128.
# The spectrogram is not an image: timm's image augmentations, mixup/cutmix (it mixes waveforms itself, with
# --audio_mixup_prob) and the image input size and normalisation do not apply.
SPECS = {'SPEECHCOMMANDS': specs.DataSetSpec(
    'SPEECHCOMMANDS', build_dataset, extra='audio',
    defaults={'nb_classes': 35, 'batch_size': 128, 'epochs': 100, 'opt': 'adam', 'opt_betas': [0.95, 0.999],
              'lr': 2.5e-4, 'lr_schedule': 'step', 'lr_step_gamma': 0.85, 'lr_step_first_epoch': 5,
              'weight_decay': 5e-7, 'loss': 'bce', 'smoothing': 0.0},
    unused={**specs.IMAGE_AUGMENTATION_OFF, **specs.IMAGE_EVALUATION_OFF, **specs.IMAGE_INPUT_OFF},
    add_arguments=add_arguments,
    backbone_kwargs=lambda args: {'in_chans': 1}, mixup=False, soft_targets=True, image_input=False)}
