"""--data_set SPEECHCOMMANDS (modalities/audio.py): filterbank parity with a float64 Kaldi reimplementation, the
v0.02 layout and its errors, seeded augmentation, and (slow) training on synthesised speech through main.py,
exact resume after SIGKILL.

The speech is real synthesised speech: Debian's espeak-ng (several English accents and voice variants) and flite
(voices built from CMU-ARCTIC recordings) say command words; sox makes 16 kHz mono 1 s files. Speakers (voices) are
split between training, validation and testing lists, so the accuracy is measured on unheard voices.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

import datasets
import main
from conftest import skip_unless_ci
from datasets import SeededAugmentation
from optim_factory import step_scheduler
from modalities import audio
from train_helpers import (TINY_UNIREPLKNET, assert_same_training_state, assert_succeeded,
                           read_log, run_killed_after_each, run_main, run_plain_command)

WORDS = ('yes', 'no', 'up', 'seven')
ESPEAK_VOICES = [f'{accent}+{variant}' for accent in ('en-us', 'en-gb', 'en-gb-scotland', 'en-029', 'en-gb-x-rp')
                 for variant in ('m1', 'm3', 'f2', 'm7', 'f4', 'klatt')]
FLITE_VOICES = ('kal', 'awb', 'rms', 'slt', 'kal16')


@pytest.fixture(scope='module')
def speech_tools():
    """The Debian tools that synthesise the spoken commands (tests that need them take `spoken_commands`)."""
    missing = [tool for tool in ('espeak-ng', 'flite', 'sox') if shutil.which(tool) is None]
    if missing:
        skip_unless_ci(f"needs Debian packages {', '.join(missing)} (.ci/run installs them)")


# ---------------------------------------------------------------- reference filterbank

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def kaldi_fbank_reference(wave, sample_rate=16000, num_bins=128):
    """float64 numpy Kaldi fbank from Kaldi's definition (feature-window.cc, mel-computations.cc) with the
    release's options: 25 ms frames every 10 ms (snip_edges), DC removal, pre-emphasis 0.97 (first sample
    against itself), Hanning window, FFT zero-padded to a power of two, power spectrum, triangular filters equally
    spaced on mel = 1127 ln(1 + f / 700) from 20 Hz to Nyquist (the Nyquist bin unused), log with float32 eps.

    Returns (log energies, float32 bound): the bound is how far a float32 computation of each log energy may be from
    the exact one, from the rounding of its three float32 steps (see float32_rounding_bound)."""
    length, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    n_frames = 1 + (len(wave) - length) // shift
    frames = np.stack([wave[i * shift:i * shift + length] for i in range(n_frames)]).astype(np.float64)
    frame_norms = np.linalg.norm(frames, axis=1)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))
    fft_size = 1 << (length - 1).bit_length()
    magnitude = np.abs(np.fft.rfft(frames, n=fft_size))

    def mel(freq):
        return 1127.0 * np.log(1.0 + freq / 700.0)

    low, delta = mel(20.0), (mel(sample_rate / 2) - mel(20.0)) / (num_bins + 1)
    bin_mel = mel(np.arange(fft_size // 2) * sample_rate / fft_size)
    banks = np.zeros((num_bins, fft_size // 2 + 1))
    for m in range(num_bins):
        left, center, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        rising, falling = (bin_mel - left) / (center - left), (right - bin_mel) / (right - center)
        banks[m, :fft_size // 2] = np.maximum(0.0, np.minimum(rising, falling))
    energies = magnitude ** 2 @ banks.T
    log_energies = np.log(np.maximum(energies, FLOAT32_EPS))
    bound = float32_rounding_bound(magnitude, energies, log_energies, banks, frame_norms, fft_size,
                                   weight_error=FLOAT32_EPS * mel(sample_rate / 2) / delta)
    return log_energies, bound


def float32_rounding_bound(magnitude, energies, log_energies, banks, frame_norms, fft_size, weight_error):
    """Per (frame, bin): how much float32 rounding can move a log filterbank energy, so the comparison holds on any
    instruction set (AVX2 and AVX-512 FFTs and matrix products round differently) and is tight where the float32
    computation is well-conditioned.

    - FFT: each coefficient is off by about eps * log2(fft_size) * |frame| (eps per butterfly stage, the frame's
      norm as the scale), which moves |X|^2 by 2 |X| d + d^2: large against a quiet band of a loud frame.
    - Filters: the triangles come from float32 mel positions (eps * mel(Nyquist) absolute), so each weight is off
      by `weight_error` = that over the triangle's half width, also on the bins next to the triangle's ends.
    - Log: eps relative to the result.
    An energy E off by dE gives a log off by dE / max(E, eps) (the clamp only shrinks differences)."""
    fft_error = (FLOAT32_EPS * np.log2(fft_size) * frame_norms)[:, None]
    in_reach = banks > 0
    in_reach[:, 1:] |= banks[:, :-1] > 0
    in_reach[:, :-1] |= banks[:, 1:] > 0
    energy_error = (2 * magnitude * fft_error + fft_error ** 2) @ banks.T + \
        weight_error * magnitude ** 2 @ in_reach.T.astype(np.float64)
    return energy_error / np.maximum(energies, FLOAT32_EPS) + FLOAT32_EPS * np.abs(log_energies)


def test_filterbank_matches_a_float64_kaldi_reimplementation():
    rng = np.random.default_rng(0)
    time_axis = np.arange(16000) / 16000
    # A chirp, a tone and noise: energy in every band, with a quiet stretch.
    wave = 0.3 * np.sin(2 * np.pi * (200 + 3000 * time_axis) * time_axis) + 0.05 * rng.standard_normal(16000)
    wave[4000:6000] *= 1e-3
    wave = wave.astype(np.float32)
    expected, float32_bound = kaldi_fbank_reference(wave)
    got = audio.KaldiFbank()(torch.from_numpy(wave)).double().numpy()
    assert got.shape == expected.shape == (98, 128)
    # float32 against float64 on log energies from -16 to +10, each within what float32 rounding allows: a
    # quiet band next to a loud one may be off by 1e-2, most entries by at most 1e-4.
    np.testing.assert_array_less(np.abs(got - expected), float32_bound)
    # The bound stays sharp (a wrong window, pre-emphasis or mel scale moves most entries by more than 1e-3).
    assert np.median(float32_bound) < 1e-4 and np.mean(float32_bound < 1e-3) > 0.9
    # Bin 3 (about 60 Hz) gets no FFT bin, as in the release's torchaudio: log(float32 eps).
    assert np.all(got[:, 3] == pytest.approx(np.log(FLOAT32_EPS), abs=1e-4))


# ---------------------------------------------------------------- layout

def write_wav(path, samples, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, samples, rate, subtype='PCM_16')


def tone_folder(root, words=('go', 'stop', 'down'), per_word=3):
    """A v0.02-layout folder of noisy tones (no speech tools needed); file n of each word goes to a list."""
    rng = np.random.default_rng(0)
    validation, testing = [], []
    for k, word in enumerate(words):
        for n in range(per_word):
            rel = f'{word}/spk{n}_nohash_0.wav'
            tone = np.sin(2 * np.pi * 300 * (k + 1) * np.arange(16000) / 16000)
            write_wav(os.path.join(root, rel), 0.3 * tone + 0.01 * rng.standard_normal(16000))
            (validation if n == 1 else testing if n == 2 else []).append(rel)
    write_wav(os.path.join(root, audio.BACKGROUND_NOISE_FOLDER, 'noise.wav'), rng.standard_normal(16000) * 0.1)
    for name, entries in (('validation_list.txt', validation), ('testing_list.txt', testing)):
        with open(os.path.join(root, name), 'w') as f:
            f.write('\n'.join(entries) + '\n')
    return str(root)


def speech_args(data_path, **overrides):
    args = main.parse_args(['--data_set', 'SPEECHCOMMANDS', '--data_path', data_path, '--nb_classes', '3',
                            '--mixup', '0', '--cutmix', '0'])
    vars(args).update(overrides)
    return args


def test_v002_layout_splits_and_sorted_class_order(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    train, classes = audio.speech_commands_files(root, 'training')
    assert classes == ['down', 'go', 'stop']
    assert sorted(os.path.relpath(path, root) for path, _ in train) == \
        ['down/spk0_nohash_0.wav', 'go/spk0_nohash_0.wav', 'stop/spk0_nohash_0.wav']
    testing, _ = audio.speech_commands_files(root, 'testing')
    assert [(os.path.relpath(p, root), label) for p, label in testing] == \
        [('go/spk2_nohash_0.wav', 1), ('stop/spk2_nohash_0.wav', 2), ('down/spk2_nohash_0.wav', 0)]
    label_map = tmp_path / 'labels.csv'
    label_map.write_text('index,mid,display_name\n0,/m/a,stop\n1,/m/b,go\n2,/m/c,down\n')
    _, ordered = audio.speech_commands_files(root, 'training', str(label_map))
    assert ordered == ['stop', 'go', 'down']


def test_eval_split_is_validation_while_training_and_testing_for_eval(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    while_training, _ = audio.build_dataset(False, speech_args(root))
    for_eval, _ = audio.build_dataset(False, speech_args(root, eval=True))
    assert [os.path.basename(os.path.dirname(p)) + '/' + os.path.basename(p) for p, _ in while_training.samples][0] \
        == 'go/spk1_nohash_0.wav'
    assert {os.path.basename(p) for p, _ in for_eval.samples} == {'spk2_nohash_0.wav'}


def test_layout_errors_say_what_is_missing(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    os.remove(os.path.join(root, 'testing_list.txt'))
    with pytest.raises(FileNotFoundError, match='missing testing_list.txt'):
        audio.speech_commands_files(root, 'training')
    root = tone_folder(tmp_path / 'sc2')
    with open(os.path.join(root, 'validation_list.txt'), 'a') as f:
        f.write('go/ghost_nohash_0.wav\n')
    with pytest.raises(FileNotFoundError,
                       match=r"1 listed audio file\(s\) do not exist, e.g. '.*go/ghost_nohash_0.wav'"):
        audio.build_dataset(False, speech_args(root))
    with pytest.raises(ValueError, match='Pass --nb_classes 3'):
        audio.build_dataset(True, speech_args(root, nb_classes=35))


def test_other_sample_rates_are_resampled(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    write_wav(str(tmp_path / 'a' / 'tone8k.wav'), tone, rate=8000)
    resampled = audio.read_wav(str(tmp_path / 'a' / 'tone8k.wav')).numpy()
    assert resampled.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(resampled))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bin k = k Hz


def test_unreadable_wav_is_named_or_skipped_and_counted(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    broken = os.path.join(root, 'go', 'spk0_nohash_0.wav')
    with open(broken, 'wb') as f:
        f.write(b'not a wav')
    dataset, _ = audio.build_dataset(True, speech_args(root))
    index = [path for path, _ in dataset.samples].index(broken)
    with pytest.raises(RuntimeError, match='spk0_nohash_0.wav'):
        dataset[index]
    skipping, _ = audio.build_dataset(True, speech_args(root, skip_corrupt_images=True))
    assert skipping[index] is None and skipping.skipped_count == 1


def test_empty_wav_and_list_line_without_word_folder_are_named(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    empty = os.path.join(root, 'stop', 'spk0_nohash_0.wav')
    write_wav(empty, np.zeros(0))
    assert soundfile.info(empty).frames == 0            # a valid header with no samples
    nan_wav = os.path.join(root, 'down', 'spk0_nohash_0.wav')
    soundfile.write(nan_wav, np.full(1600, np.nan, np.float32), 16000, subtype='FLOAT')
    dataset, _ = audio.build_dataset(True, speech_args(root))
    paths = [path for path, _ in dataset.samples]
    with pytest.raises(datasets.UnreadableSampleError, match=r"stop/spk0_nohash_0\.wav' holds no samples \(zero "
                                                             r"length\).*--skip_corrupt true"):
        dataset[paths.index(empty)]
    with pytest.raises(datasets.UnreadableSampleError, match=r"down/spk0_nohash_0\.wav' holds non-finite samples"):
        dataset[paths.index(nan_wav)]
    skipping, _ = audio.build_dataset(True, speech_args(root, skip_corrupt_images=True))
    assert skipping[paths.index(empty)] is None and skipping[paths.index(nan_wav)] is None
    assert skipping.skipped_count == 2

    with open(os.path.join(root, 'testing_list.txt'), 'a') as f:
        f.write('\nspk9_nohash_0.wav\n')
    with pytest.raises(ValueError, match=r"testing_list\.txt, line 5: expected '<word>/<speaker>_nohash_<n>\.wav' "
                                         r"\(the word folder is the label\); got 'spk9_nohash_0\.wav'"):
        audio.build_dataset(False, speech_args(root, audio_eval_list='testing'))


def test_training_samples_are_seeded_per_index_and_mixed_with_soft_targets(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    dataset, _ = audio.build_dataset(True, speech_args(root, audio_mixup_prob=1.0))
    seeded = SeededAugmentation(dataset, seed=0)
    first, again = seeded[1], seeded[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (1, audio.NUM_MEL_BINS, audio.TARGET_FRAMES)
    assert first[1].sum().item() == pytest.approx(1.0) and (first[1] > 0).sum() <= 2
    mixed_weights = [seeded[i][1].max().item() for i in range(3)]
    assert all(0.5 <= weight < 1.0 for weight in mixed_weights)  # lambda ~ Beta(10, 10): never one class only
    seeded.set_epoch(1)
    assert not torch.equal(seeded[1][0], first[0])


def test_evaluation_features_are_deterministic_and_normalised(tmp_path):
    root = tone_folder(tmp_path / 'sc')
    dataset, _ = audio.build_dataset(False, speech_args(root))
    features, label = dataset[0]
    assert isinstance(label, int) and torch.equal(features, dataset[0][0])
    # 98 frames of speech then zero padding, which normalises to (0 - mean) / (2 std).
    padding = (0 - audio.FBANK_MEAN) / (2 * audio.FBANK_STD)
    assert torch.allclose(features[0, :, 98:], torch.full((128, 30), padding))
    assert not torch.allclose(features[0, :, 97], torch.full((128,), padding))


# ---------------------------------------------------------------- synthesised speech through main.py

def synthesise(word, voice, path):
    """One word by one voice as 16 kHz 16-bit mono, padded or cut to 1 s."""
    raw = path + '.raw.wav'
    if voice in FLITE_VOICES:
        subprocess.run(['flite', '-voice', voice, '-t', word, '-o', raw], check=True, capture_output=True)
    else:
        subprocess.run(['espeak-ng', '-v', voice, '-w', raw, word], check=True, capture_output=True)
    subprocess.run(['sox', raw, '-r', '16000', '-c', '1', '-b', '16', path, 'pad', '0', '1', 'trim', '0', '1'],
                   check=True, capture_output=True)
    os.remove(raw)


def build_spoken_commands(root):
    """v0.02 layout: every voice says every word; voices split 3:1:1 between training, validation, testing."""
    os.makedirs(root, exist_ok=True)
    voices = ESPEAK_VOICES + list(FLITE_VOICES)
    lists = {'validation': [], 'testing': []}
    for number, voice in enumerate(voices):
        split = {3: 'validation', 4: 'testing'}.get(number % 5, 'training')
        speaker = f'{number:08x}'
        for word in WORDS:
            os.makedirs(os.path.join(root, word), exist_ok=True)
            rel = f'{word}/{speaker}_nohash_0.wav'
            synthesise(word, voice, os.path.join(root, rel))
            if split != 'training':
                lists[split].append(rel)
    for split, entries in lists.items():
        with open(os.path.join(root, audio.LIST_FILES[split]), 'w') as f:
            f.write('\n'.join(entries) + '\n')
    return root


@pytest.fixture(scope='module')
def spoken_commands(speech_tools, tmp_path_factory):
    return build_spoken_commands(str(tmp_path_factory.mktemp('speech_commands')))


def speech_train_argv(data_path):
    return ['--config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'audio', 'quickstart_speech.yaml'),
            '--data_path', data_path, '--nb_classes', str(len(WORDS)), '--num_workers', '0']


@pytest.mark.slow
def test_tiny_model_recognises_words_of_unheard_voices(spoken_commands, tmp_path):
    output_dir = str(tmp_path / 'run')
    assert_succeeded(run_main([*speech_train_argv(spoken_commands), '--output_dir', output_dir], timeout=600))
    best_validation = max(line['test_acc1'] for line in read_log(output_dir))
    completed = run_main([*speech_train_argv(spoken_commands), '--eval', 'true',
                          '--resume', os.path.join(output_dir, 'checkpoint-best.pth')])
    assert_succeeded(completed)
    assert f'{len(WORDS) * len(ESPEAK_VOICES + list(FLITE_VOICES)) // 5} test images' in completed.stdout
    test_accuracy = float(re.search(r'Accuracy of the network on \d+ test images: (\S+)%', completed.stdout).group(1))
    chance = 100.0 / len(WORDS)
    assert best_validation >= 2 * chance and test_accuracy >= 2 * chance, (best_validation, test_accuracy)


@pytest.mark.slow
def test_killed_and_resumed_speech_run_is_bitwise_equal(spoken_commands, tmp_path):
    """Waveform mixup (python/numpy RNG), SpecAugment and noise (torch RNG), drop path: killed mid-epoch."""
    argv = [*speech_train_argv(spoken_commands), '--model_overrides', TINY_UNIREPLKNET, '--epochs', '1',
            '--batch_size', '16', '--drop_path', '0.1', '--audio_mixup_prob', '0.6', '--save_ckpt_every_steps', '1',
            '--model_ema', 'true']
    uninterrupted, interrupted = str(tmp_path / 'uninterrupted'), str(tmp_path / 'interrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step2.pth'])
    assert_same_training_state(os.path.join(interrupted, 'checkpoint-0.pth'),
                               os.path.join(uninterrupted, 'checkpoint-0.pth'))


def test_recipe_schedule_is_asts_lr_times_0_85_per_epoch_from_epoch_5():
    args = main.parse_args(['--config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'audio',
                                                     'unireplknet_s_speechcommands.yaml')])
    schedule = step_scheduler(args.lr, args.lr_step_gamma, args.epochs, 3, args.lr_step_first_epoch)
    # AST: MultiStepLR(milestones=range(5, 1000), gamma=0.85) stepped after each finished epoch.
    expected = [2.5e-4 * 0.85 ** sum(1 for milestone in range(5, 1000) if milestone <= epoch)
                for epoch in range(args.epochs)]
    np.testing.assert_allclose(schedule[::3], expected, rtol=1e-12)


@pytest.mark.slow
def test_plain_command_trains_with_the_speech_commands_recipe(tmp_path):
    stdout = run_plain_command('SPEECHCOMMANDS', tone_folder(str(tmp_path / 'speech')),
                               ['--nb_classes', '3', '--batch_size', '3'], str(tmp_path / 'run'))
    assert '"loss": "bce"' in stdout and '"opt": "adam"' in stdout and '"mixup": 0.0' in stdout
