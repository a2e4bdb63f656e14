"""One spec per data set: what main.py composes to train on it, and the one rule for its options.

A `DataSetSpec` lives in the module that already knows its data set (`datasets.py` for the image data sets,
`modalities/<modality>.py` for the others, each as `SPECS = {name: DataSetSpec(...)}`) and declares:

- `build_dataset(is_train, args) -> (dataset, nb_classes)`, the model around the backbone (`backbone_kwargs`,
  `build_model`), the task (`build_task`; None = classification) and the capabilities main.py asks for: timm's
  Mixup/CutMix (`mixup`, and `batch_mixing` where the data set wraps it), targets that are already probability
  vectors (`soft_targets`), the parameter-name prefix of the backbone inside the model (`backbone_prefix`, for
  layer decay and --finetune), the evaluation views per sample (`eval_views`) and whether the model takes plain
  images (`image_input`, for --throughput);
- `defaults`: the options whose value in the data set's recipe differs from main.py's parser defaults, which are
  the image recipe's (ImageNet-1K, the release's main.py);
- `unused`: main.py options the data set cannot use, each with the value that turns it off;
- its own options (`add_arguments(parser)`, plus `options` declared by another data set's add_arguments), and
  `extra`: the pyproject.toml extra that installs the packages its reader needs.

The rule (`parser_defaults`, `explicit_option_error`): an option the user did not set (on the command line or in a
--config file) takes the data set's default; an option set explicitly that the data set cannot use (an `unused` one,
or another data set's own option) is an error naming it, unless it is set to its off value (`--mixup 0` is always
accepted).

This module imports only the standard library: main.py, tools and tests read specs without importing any
modality's packages, and a missing extra is reported (`require`) before anything else happens.
"""
import argparse
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

# --data_set name -> the module that defines its spec (in its SPECS dict).
SPEC_MODULES = {
    'IMNET': 'datasets',
    'image_folder': 'datasets',
    'CIFAR': 'datasets',
    'DIGITS': 'datasets',
    'SPEECHCOMMANDS': 'modalities.audio',
    'KINETICS400': 'modalities.video',
    'MODELNET40': 'modalities.point_cloud',
    'GLOBAL_TEMP': 'modalities.time_series',
    'GLOBAL_WIND': 'modalities.time_series',
    'audio_folder': 'modalities.audio_folder',
    'point_folder': 'modalities.point_folder',
}

# pyproject.toml extra -> the modules it installs that the code imports (import names, checked without importing).
EXTRA_MODULES = {
    'audio': ('soundfile', 'lhotse'),
    'video': ('av',),
    'points': ('h5py', 'trimesh'),
    'timeseries': ('pandas',),
    'dense': ('mmengine', 'mmseg', 'mmdet', 'mmcv', 'segmentation_models_pytorch', 'pycocotools'),
    'export': ('onnx', 'onnxscript', 'onnxruntime', 'skimage'),
    'analysis': ('matplotlib', 'skimage'),
}

# main.py's image-recipe options that only images use, and the value that turns each off. None: the option has no
# off value (setting it explicitly at all is an error).
IMAGE_AUGMENTATION_OFF = {
    'mixup': 0.0, 'cutmix': 0.0, 'cutmix_minmax': None, 'mixup_prob': None, 'mixup_switch_prob': None,
    'mixup_mode': None, 'aa': 'none', 'color_jitter': 0.0, 'reprob': 0.0, 'remode': None, 'recount': None,
    'train_interpolation': None,
}
IMAGE_EVALUATION_OFF = {'crop_pct': None}
IMAGE_INPUT_OFF = {'input_size': None, 'imagenet_default_mean_and_std': None, 'data_format': 'folder'}
CLASSIFICATION_OFF = {'smoothing': 0.0, 'loss': None, 'nb_classes': 0}
OFF_SPELLINGS = {'aa': ('none', '')}  # --aa none turns RandAugment off, as does an empty value (datasets.py)


class MissingExtraError(RuntimeError):
    """A data set or tool needs packages of a pyproject.toml extra that is not installed."""


@dataclass(frozen=True)
class DataSetSpec:
    name: str
    build_dataset: Callable          # (is_train, args) -> (dataset, nb_classes)
    extra: str = ''                  # the pyproject.toml extra its reader needs ('' = the core install)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    unused: Mapping[str, Any] = field(default_factory=dict)
    add_arguments: Optional[Callable] = None      # (parser) -> None: adds its own options (may serve several specs)
    options: tuple = ()              # own options it shares with a data set whose add_arguments declares them
    backbone_kwargs: Callable = lambda args: {}   # backbone constructor kwargs, before --model_overrides
    build_model: Optional[Callable] = None        # (args, backbone) -> the model to train; None: the backbone
    build_task: Optional[Callable] = None         # args -> task (tasks.py); None: classification
    mixup: bool = True               # timm's batch Mixup/CutMix applies
    batch_mixing: Optional[Callable] = None       # (timm Mixup, args) -> what main.py applies instead (video)
    soft_targets: bool = False       # the data set itself yields probability-vector training targets
    backbone_prefix: str = ''        # parameter-name prefix of the backbone inside the model (layer decay)
    eval_views: Callable = lambda args: 1         # views per evaluation sample (their probabilities are averaged)
    image_input: bool = True         # the model takes (B, 3, input_size, input_size) images (--throughput)

    def __post_init__(self):
        overlap = sorted(set(self.defaults) & set(self.unused))
        if overlap:
            raise ValueError(f'{self.name}: {overlap} are both defaults and unused options')


def names():
    return list(SPEC_MODULES)


def get(name):
    """The spec of --data_set `name` (imports its module, which imports no extra's package at import time)."""
    if name not in SPEC_MODULES:
        raise ValueError(f"unknown --data_set {name!r}; choose one of: {', '.join(SPEC_MODULES)}")
    return importlib.import_module(SPEC_MODULES[name]).SPECS[name]


def all_specs():
    return [get(name) for name in SPEC_MODULES]


def add_arguments(parser):
    """Add every data set's own options to main.py's parser (each add_arguments function once)."""
    for add in dict.fromkeys(spec.add_arguments for spec in all_specs() if spec.add_arguments is not None):
        add(parser)


def own_options(spec):
    """The options (dests) only this data set (and those sharing them) uses: its add_arguments' and `options`."""
    parser = argparse.ArgumentParser(add_help=False)
    if spec.add_arguments is not None:
        spec.add_arguments(parser)
    return [action.dest for action in parser._actions] + list(spec.options)


def option_owners():
    """{own option of some data set: names of the data sets that use it}."""
    owners = {}
    for spec in all_specs():
        for option in own_options(spec):
            owners.setdefault(option, []).append(spec.name)
    return owners


def parser_defaults(spec):
    """The data set's defaults for main.py's parser: its recipe's values, and its unused options turned off."""
    return {**{option: off for option, off in spec.unused.items() if off is not None}, **spec.defaults}


def install_command(extra):
    return f'pip install ".[{extra}]"'


def require(extra, what, modules=None):
    """Raise MissingExtraError (one line with the pip command) when a module of `extra` (or of `modules`, the part
    of the extra that `what` imports) is not installed. Checked without importing anything."""
    if not extra:
        return
    missing = [module for module in modules or EXTRA_MODULES[extra] if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtraError(f"{what} needs the '{extra}' extra (missing: {', '.join(missing)}); install it "
                                f"from the repository's folder with: {install_command(extra)}")


def exit_unless_installed(extra, what, modules=None):
    """For scripts, before they import the extra's packages: stop with the one-line `require` message."""
    try:
        require(extra, what, modules)
    except MissingExtraError as missing:
        raise SystemExit(f'error: {missing}') from None


def is_off(option, value, off):
    """Whether `value` turns the unused `option` off (off None: the option has no off value)."""
    if option in OFF_SPELLINGS:
        return value is None or str(value).lower() in OFF_SPELLINGS[option]
    if off is None:
        return False
    return value == off


def explicit_option_error(spec, args, explicit, owners):
    """Check the options set explicitly (`explicit`: command line and --config keys) against the spec.

    Parser defaults already hold the spec's defaults (main.parse_args applies them before parsing). Returns an error
    message naming the first offending option, or None. owners: option_owners().
    """
    for option in sorted(explicit):
        value = getattr(args, option)
        users = owners.get(option)
        if users is not None and spec.name not in users:
            return (f'--{option} is an option of --data_set {" / ".join(users)}; --data_set {spec.name} does not '
                    'use it: drop it')
        if option in spec.unused and not is_off(option, value, spec.unused[option]):
            off = spec.unused[option]
            fix = f'drop it or pass --{option} {off}' if off is not None else 'drop it'
            return f'--{option} {value}: --data_set {spec.name} does not use --{option}; {fix}'
    return None

