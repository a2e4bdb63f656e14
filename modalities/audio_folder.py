"""Your own recordings as class folders, for `--data_set audio_folder` (as `image_folder` is for images):

    <data_path>/train/<class>/*.wav|*.flac      training
    <data_path>/val/<class>/*.wav|*.flac        evaluation (while training and with --eval true)

Class i is the i-th of the sorted folder names of train/ (a val/ folder that train/ lacks is an error); --nb_classes
must equal their number. A file of any length, rate or channel count goes through the Speech Commands recipe of
modalities/audio.py: mono (channel 0) at 16 kHz, the Kaldi filterbank, cut or zero-padded to 128 frames (1.28 s: a
longer recording is cut to its first 1.28 s, as the recipe cuts), and in training the release's waveform mixup
(--audio_mixup_prob), SpecAugment, noise and roll, seeded per sample (a killed run resumes bitwise-equal). An
unreadable file is an error naming it, or with --skip_corrupt true skipped and counted.
"""
import datasets
from modalities import audio
from modalities.audio import SOFT_TARGETS, backbone_kwargs  # noqa: F401  (the same model and loss as audio)

AUDIO_EXTENSIONS = ('.wav', '.flac')


class AudioFiles(audio.SpeechCommands):
    """Recordings listed as [(path, label)] with their class names, read and featurised as SpeechCommands reads its
    files (tools/predict.py lists a user's files this way, with label -1)."""

    def __init__(self, samples, classes, train, mixup_prob=0.0, skip_corrupt=False):
        datasets.SkipsUnreadable.__init__(self, skip_corrupt)  # SpeechCommands' own __init__ reads the v0.02 layout
        self.samples, self.classes = samples, classes
        self.train = train
        self.mixup_prob = mixup_prob
        self.fbank = audio.KaldiFbank()


def build_dataset(is_train, args):
    if is_train and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        raise ValueError('--data_set audio_folder mixes raw waveforms itself (--audio_mixup_prob); pass --mixup 0 '
                         "--cutmix 0 (timm's image mixup/cutmix would mix spectrogram pixels).")
    samples, classes = datasets.class_folder_split(args, is_train, AUDIO_EXTENSIONS)
    dataset = AudioFiles(samples, classes, train=is_train, mixup_prob=args.audio_mixup_prob if is_train else 0.0,
                         skip_corrupt=args.skip_corrupt_images)
    return dataset, len(classes)
