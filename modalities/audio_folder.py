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
import specs
from modalities import audio

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
    samples, classes = datasets.class_folder_split(args, is_train, AUDIO_EXTENSIONS)
    dataset = AudioFiles(samples, classes, train=is_train, mixup_prob=args.audio_mixup_prob if is_train else 0.0,
                         skip_corrupt=args.skip_corrupt_images)
    return dataset, len(classes)


# The Speech Commands recipe and model (modalities/audio.py's spec) on class folders: the same defaults but the class
# count (the folders say it), the same options unused; of SPEECHCOMMANDS' own options only --audio_mixup_prob applies.
_SPEECH = audio.SPECS['SPEECHCOMMANDS']
SPECS = {'audio_folder': specs.DataSetSpec(
    'audio_folder', build_dataset, extra='audio',
    defaults={option: value for option, value in _SPEECH.defaults.items() if option != 'nb_classes'},
    unused=_SPEECH.unused, options=('audio_mixup_prob',), backbone_kwargs=_SPEECH.backbone_kwargs, mixup=False,
    soft_targets=True, image_input=False)}
