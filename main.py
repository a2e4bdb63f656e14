"""Train and evaluate UniRepLKNet and RepLKNet on ImageNet-1K/22K (and small local data sets).

Options keep the names, meanings and defaults of the original release's main.py, plus
--use_checkpoint, --config, --amp_dtype, --channels_last, --sync_bn, --reparam, --throughput,
--save_ckpt_every_steps, --skip_corrupt (--skip_corrupt_images), --model_overrides and --unsafe_load_checkpoint,
--compile (torch.compile) and --mesa / --mesa_start_ratio (the EMA model as a teacher, mesa.py).

    python main.py --model unireplknet_a --data_set DIGITS --input_size 32 --device cpu ...
    torchrun --nproc_per_node=8 main.py --model unireplknet_s --data_path /path/to/imagenet-1k ...
    python -m torch.distributed.launch --nproc_per_node=4 main.py ...    (same options)

A run can be killed at any moment: --auto_resume (default on) continues from the newest checkpoint in
--output_dir at the exact optimizer step, with the same random streams, so the final weights equal
those of an uninterrupted run.
"""
import argparse
import copy
import datetime
import functools
import json
import os
import random
import sys
import textwrap
import time

import numpy as np
import timm
import torch
import torch.backends.cudnn as cudnn
import yaml
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import reparameterize_model

import metric_logging
import replknet  # registers replknet_* with timm; REPLKNET_ALIASES maps the original names
import unireplknet  # noqa: F401  (registers unireplknet_* with timm)
import utils
from checkpoint import (CheckpointError, Checkpointer, load_checkpoint_file, load_model_state,
                        remove_stale_temporaries, select_model_state, to_plain_data)
from datasets import RankAgreedBatches, build_dataset, class_names, collate_skipping_corrupt, count_skipped
from engine import Precision, train_one_epoch
from mesa import Mesa
from optim_factory import cosine_scheduler, create_optimizer, layer_decay_assigner, step_scheduler
import specs
from shards import ShardError
from tasks import ClassificationTask
from utils import str2bool

# How many batches --throughput runs before and while timing.
THROUGHPUT_WARMUP_ITERS = 10
THROUGHPUT_TIMED_ITERS = 30


# New on/off options accept the bare flag too: `--reparam` means `--reparam true`.
OPTIONAL_BOOL = dict(type=str2bool, nargs='?', const=True, default=False)


def compile_backend(value):
    """--compile's value: true (or the bare flag) = 'inductor', false = '' (off), anything else a backend name."""
    text = str(value).strip()
    if text.lower() in ('', 'false', 'no', 'off', '0'):
        return ''
    return 'inductor' if text.lower() in ('true', 'yes', 'on', '1') else text


def get_args_parser():
    parser = argparse.ArgumentParser('UniRepLKNet / RepLKNet training and evaluation', add_help=False)
    parser.add_argument('--config', default=None, type=str, metavar='FILE.yaml',
                        help='YAML file of option defaults (keys = option names without --); explicit flags win')
    parser.add_argument('--batch_size', default=64, type=int, help='Per GPU batch size')
    parser.add_argument('--epochs', default=300, type=int)
    parser.add_argument('--update_freq', default=1, type=int, help='gradient accumulation steps')

    # Model parameters
    parser.add_argument('--model', default='unireplknet_a', type=str, metavar='MODEL',
                        help='unireplknet_{a,f,p,n,t,s,b,l,xl}, replknet_{31b,31l,xl} or '
                             'RepLKNet-31B / RepLKNet-31L / RepLKNet-XL')
    parser.add_argument('--drop_path', type=float, default=0, metavar='PCT', help='Drop path rate (default: 0.0)')
    parser.add_argument('--input_size', default=224, type=int, help='image input size')
    parser.add_argument('--layer_scale_init_value', default=1e-6, type=float,
                        help='Layer scale initial values (UniRepLKNet)')
    parser.add_argument('--use_checkpoint', type=str2bool, default=False,
                        help='activation checkpointing (torch.utils.checkpoint) in every block to save memory')
    parser.add_argument('--sync_bn', **OPTIONAL_BOOL,
                        help='every BatchNorm of the model (an adapter\'s included) becomes a SyncBatchNorm '
                             '(multi-GPU; PyTorch does not support it on CPU)')
    parser.add_argument('--model_overrides', default=None, type=str, metavar='YAML',
                        help='extra model constructor kwargs as a YAML/JSON dict, for experiments and tests, '
                             'e.g. \'{"depths": [1,1,1,1], "dims": [8,16,32,64], '
                             '"kernel_sizes": [[3],[7],[3],[5]]}\'')

    # EMA related parameters
    parser.add_argument('--model_ema', type=str2bool, default=False)
    parser.add_argument('--model_ema_decay', type=float, default=0.9999, help='')
    parser.add_argument('--model_ema_force_cpu', type=str2bool, default=False, help='')
    parser.add_argument('--model_ema_eval', type=str2bool, default=False, help='Using ema to eval during training.')

    # torch.compile and MESA (README: "torch.compile" and "MESA")
    parser.add_argument('--compile', type=compile_backend, nargs='?', const='inductor', default='', metavar='BACKEND',
                        help='torch.compile the model for training, evaluation and --throughput (bare flag or true: '
                             'the inductor backend; or a backend name, e.g. aot_eager); checkpoints keep the '
                             'un-compiled state_dict keys')
    parser.add_argument('--mesa', type=float, default=0.0, metavar='WEIGHT',
                        help='MESA: weight of the distillation term towards the EMA model (needs --model_ema true; '
                             '0 = off; see mesa.py)')
    parser.add_argument('--mesa_start_ratio', type=float, default=0.25, metavar='FRACTION',
                        help='MESA starts at this fraction of all optimizer updates (default 0.25)')

    # Optimization parameters
    parser.add_argument('--opt', default='adamw', type=str, metavar='OPTIMIZER',
                        help='Optimizer from timm: adamw, sgd, lamb, lookahead_adamw, ... (default: "adamw")')
    parser.add_argument('--opt_eps', default=1e-8, type=float, metavar='EPSILON', help='Optimizer Epsilon')
    parser.add_argument('--opt_betas', default=None, type=float, nargs='+', metavar='BETA', help='Optimizer Betas')
    parser.add_argument('--clip_grad', type=float, default=None, metavar='NORM',
                        help='Clip gradient norm (default: None, no clipping); applies in every precision')
    parser.add_argument('--momentum', type=float, default=0.9, metavar='M', help='SGD momentum (default: 0.9)')
    parser.add_argument('--weight_decay', type=float, default=0.05, help='weight decay (default: 0.05)')
    parser.add_argument('--weight_decay_end', type=float, default=None,
                        help='Final value of the weight decay (cosine schedule); default: --weight_decay')
    parser.add_argument('--lr', type=float, default=4e-3, metavar='LR',
                        help='learning rate (default: 4e-3), with total batch size 4096')
    parser.add_argument('--layer_decay', type=float, default=1.0)
    parser.add_argument('--min_lr', type=float, default=1e-6, metavar='LR',
                        help='lower lr bound for cyclic schedulers that hit 0 (1e-6)')
    parser.add_argument('--warmup_epochs', type=int, default=20, metavar='N',
                        help='epochs to warmup LR, if scheduler supports')
    parser.add_argument('--warmup_steps', type=int, default=-1, metavar='N',
                        help='num of steps to warmup LR, will overload warmup_epochs if set > 0')

    # Augmentation parameters
    parser.add_argument('--color_jitter', type=float, default=0.4, metavar='PCT',
                        help='Color jitter factor (default: 0.4)')
    parser.add_argument('--aa', type=str, default='rand-m9-mstd0.5-inc1', metavar='NAME',
                        help='Use AutoAugment policy. "v0" or "original" ("none" turns it off)')
    parser.add_argument('--smoothing', type=float, default=0.1, help='Label smoothing (default: 0.1)')
    parser.add_argument('--train_interpolation', type=str, default='bicubic',
                        help='Training interpolation (random, bilinear, bicubic default: "bicubic")')

    # Evaluation parameters
    parser.add_argument('--crop_pct', type=float, default=None)

    # Random Erase params
    parser.add_argument('--reprob', type=float, default=0.25, metavar='PCT',
                        help='Random erase prob (default: 0.25)')
    parser.add_argument('--remode', type=str, default='pixel', help='Random erase mode (default: "pixel")')
    parser.add_argument('--recount', type=int, default=1, help='Random erase count (default: 1)')
    parser.add_argument('--resplit', type=str2bool, default=False,
                        help='Do not random erase first (clean) augmentation split (accepted, unused as in '
                             'the original)')

    # Mixup params
    parser.add_argument('--mixup', type=float, default=0.8, help='mixup alpha, mixup enabled if > 0.')
    parser.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha, cutmix enabled if > 0.')
    parser.add_argument('--cutmix_minmax', type=float, nargs='+', default=None,
                        help='cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)')
    parser.add_argument('--mixup_prob', type=float, default=1.0,
                        help='Probability of performing mixup or cutmix when either/both is enabled')
    parser.add_argument('--mixup_switch_prob', type=float, default=0.5,
                        help='Probability of switching to cutmix when both mixup and cutmix enabled')
    parser.add_argument('--mixup_mode', type=str, default='batch',
                        help='How to apply mixup/cutmix params. Per "batch", "pair", or "elem"')

    # Finetuning params
    parser.add_argument('--finetune', default='', help='finetune from checkpoint (path or https URL)')
    parser.add_argument('--head_init_scale', default=1.0, type=float,
                        help='classifier head initial scale, typically adjusted in fine-tuning')
    parser.add_argument('--model_key', default='model|module', type=str, help='which key to load from saved state dict')
    parser.add_argument('--model_prefix', default='', type=str)

    # Dataset parameters
    parser.add_argument('--data_path', default=None, type=str,
                        help='dataset path (IMNET: the folder holding train/ and val/; no default: pass it)')
    parser.add_argument('--eval_data_path', default=None, type=str, help='dataset path for evaluation')
    parser.add_argument('--nb_classes', default=1000, type=int, help='number of the classification types')
    parser.add_argument('--imagenet_default_mean_and_std', type=str2bool, default=True)
    parser.add_argument('--data_set', default='IMNET', choices=specs.names(), type=str,
                        help='the data set; its recipe sets some defaults differently (see the top of --help)')
    parser.add_argument('--data_format', default='folder', choices=['folder', 'shards'],
                        help='IMNET / image_folder data as class folders, or as tar shards written from them by '
                             'tools/make_shards.py (--data_path/--eval_data_path then name the shard folders)')
    parser.add_argument('--skip_corrupt', '--skip_corrupt_images', dest='skip_corrupt_images', **OPTIONAL_BOOL,
                        help='skip (and count) unreadable samples of any modality (images, audio, clips, point '
                             'files, time-series windows) instead of stopping with an error')
    parser.add_argument('--output_dir', default='', help='path where to save, empty for no saving')
    parser.add_argument('--log_dir', default=None, help='path where to tensorboard log')
    parser.add_argument('--device', default='cuda', help='device to use for training / testing (cuda or cpu)')
    parser.add_argument('--seed', default=0, type=int)

    parser.add_argument('--resume', default='', help='resume from checkpoint (path or https URL)')
    parser.add_argument('--auto_resume', type=str2bool, default=True)
    parser.add_argument('--save_ckpt', type=str2bool, default=True)
    parser.add_argument('--save_ckpt_freq', default=1, type=int)
    parser.add_argument('--save_ckpt_num', default=3, type=int)
    parser.add_argument('--save_ckpt_every_steps', default=0, type=int, metavar='N',
                        help='also write a checkpoint every N optimizer updates (bounds the work a crash loses)')
    parser.add_argument('--unsafe_load_checkpoint', **OPTIONAL_BOOL,
                        help='allow checkpoints that need arbitrary unpickling (only for files you trust)')

    parser.add_argument('--start_epoch', default=0, type=int, metavar='N', help='start epoch')
    parser.add_argument('--eval', type=str2bool, default=False, help='Perform evaluation only')
    parser.add_argument('--dist_eval', type=str2bool, default=True, help='Enabling distributed evaluation')
    parser.add_argument('--disable_eval', type=str2bool, default=False,
                        help='Disabling evaluation during training')
    parser.add_argument('--eval_freq', type=int, default=1, metavar='N',
                        help='evaluate during training after every N-th epoch (counted in finished epochs)')
    parser.add_argument('--eval_start_epoch', type=int, default=0, metavar='E',
                        help='no evaluation before E epochs are finished (except the --eval_last_epochs)')
    parser.add_argument('--eval_last_epochs', type=int, default=0, metavar='K',
                        help='evaluate after every epoch once epochs - K are finished (the last epoch always); with '
                             '--eval_freq 5 --eval_start_epoch 100 --eval_last_epochs 30 the ModelNet-40 release\'s '
                             'schedule')
    parser.add_argument('--reparam', **OPTIONAL_BOOL,
                        help='evaluate (and --throughput time) the structurally re-parameterised model')
    parser.add_argument('--throughput', **OPTIONAL_BOOL,
                        help='measure inference speed (img/s) on random input after a warm-up, then exit')
    parser.add_argument('--num_workers', default=10, type=int)
    parser.add_argument('--pin_mem', type=str2bool, default=True,
                        help='Pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')

    # distributed training parameters
    parser.add_argument('--world_size', default=None, type=int,
                        help='number of distributed processes (default: as the launcher started: torchrun, srun, '
                             'run_with_submitit.py; 1 without one); a different value is an error')
    parser.add_argument('--local_rank', '--local-rank', dest='local_rank', default=-1, type=int)
    parser.add_argument('--dist_on_itp', type=str2bool, default=False)
    parser.add_argument('--dist_url', default='env://', help='url used to set up distributed training')

    parser.add_argument('--use_amp', type=str2bool, default=False,
                        help='Use mixed precision (see --amp_dtype)')
    parser.add_argument('--amp_dtype', default='float16', choices=['float16', 'bfloat16'],
                        help='autocast dtype with --use_amp true: float16 (CUDA, with a GradScaler) or bfloat16 '
                             '(--use_amp true --amp_dtype bfloat16 is the fast path on Ampere and later GPUs)')
    parser.add_argument('--tf32', type=str2bool, default=True,
                        help='on CUDA, float32 matmuls and cuDNN convolutions use TF32 (the release\'s numerics: '
                             'torch <= 1.11 did so by default); false = full float32')
    parser.add_argument('--channels_last', **OPTIONAL_BOOL, help='channels-last memory format')
    parser.add_argument('--deterministic', **OPTIONAL_BOOL,
                        help='deterministic kernels only (no cuDNN autotuning; an op without a deterministic '
                             'version is an error), so two runs, or a killed and a resumed one, give bitwise-equal '
                             'weights on GPU too; slower')

    parser.add_argument('--loss', default='ce', choices=['ce', 'bce'],
                        help='ce: cross-entropy (soft-target CE with mixup); bce: timm BinaryCrossEntropy, one-vs-'
                             'rest on one-hot or soft targets (the audio recipe)')
    parser.add_argument('--repeated_aug', type=int, default=1, metavar='R',
                        help='repeated augmentation: each training sample R times per step, differently augmented '
                             '(the video recipe: 2); where the copies go: --repeated_aug_scope')
    parser.add_argument('--repeated_aug_scope', default='batch', choices=['batch', 'ranks'],
                        help="batch: the R copies of a sample in the same batch of one process, --batch_size counts "
                             "samples (batches of batch_size x R), every sample once per epoch (the release's video "
                             "num_sample); ranks: timm's RepeatAugSampler, copies on different ranks, --batch_size "
                             'counts copies, an epoch keeps the data set\'s size (1/R of the samples)')

    # Learning-rate schedule and early stopping (the time-series recipe: lr halved every epoch, patience 3)
    parser.add_argument('--lr_schedule', default='cosine', choices=['cosine', 'step'],
                        help='cosine (with --warmup_epochs, down to --min_lr) or step: --lr times '
                             '--lr_step_gamma ** epoch')
    parser.add_argument('--lr_step_gamma', default=0.5, type=float, help='--lr_schedule step: factor per epoch')
    parser.add_argument('--lr_step_first_epoch', default=1, type=int, metavar='EPOCH',
                        help='--lr_schedule step: the first (0-based) epoch with a decayed lr (the audio recipe: 5, '
                             'the time-series recipes: 2)')
    parser.add_argument('--early_stop_patience', default=0, type=int, metavar='N',
                        help='stop once N evaluations in a row have not beaten the best (tasks.py says what '
                             'best is: top-1 accuracy, or MSE for forecasting); 0: off')
    specs.add_arguments(parser)   # each data set's own options (--label_map, --audio_*, --video_*, --pc_*, --series_*)

    # Weights and Biases arguments
    parser.add_argument('--enable_wandb', type=str2bool, default=False, help='enable logging to Weights and Biases')
    parser.add_argument('--project', default='unireplknet', type=str, help='The name of the W&B project')
    parser.add_argument('--wandb_ckpt', type=str2bool, default=False,
                        help='Save model checkpoints as W&B Artifacts.')
    return parser


DEFAULTS_NOTE = """Where defaults come from: the defaults above are main.py's, the image recipe's (ImageNet-1K, as the
release's main.py). Each data set declares in its spec (specs.py; the SPECS of datasets.py and of
modalities/<modality>.py) where its recipe differs and which options it cannot use. An option you do not set takes
the data set's default; a --config file wins over those, and an explicit flag over both. Setting an option the data
set cannot use is an error; turning it off (e.g. --mixup 0) is always accepted. The resolved options are printed
when a run starts.

"""


def describe_data_sets(parser):
    """--help's list of each data set's recipe defaults, the options it turns off and those it cannot use."""
    def flags(options):
        return ' '.join(f'--{option} ' + (' '.join(map(str, value)) if isinstance(value, list) else str(value))
                        for option, value in options.items())

    lines = []
    for name in specs.names():
        spec = specs.get(name)
        turned_off = {option: off for option, off in spec.unused.items()
                      if off is not None and off != parser.get_default(option)}
        parts = [f'recipe: {flags(spec.defaults)}' if spec.defaults else 'recipe: the image recipe',
                 f'off: {flags(turned_off)}' if turned_off else '',
                 'cannot use: ' + ' '.join(f'--{option}' for option, off in spec.unused.items() if off is None)
                 if any(off is None for off in spec.unused.values()) else '']
        lines.append(f'--data_set {name}' + (f' (extra: {spec.extra})' if spec.extra else '') + '\n'
                     + textwrap.fill('; '.join(part for part in parts if part), width=118, initial_indent='  ',
                                     subsequent_indent='    '))
    return '\n'.join(lines)


def build_parser():
    options = get_args_parser()
    return argparse.ArgumentParser(description='UniRepLKNet / RepLKNet training and evaluation',
                                   epilog=DEFAULTS_NOTE + describe_data_sets(options),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, parents=[options])


def read_config_file(parser, path):
    """A YAML file's option values; unknown keys and bad choices are errors."""
    if not os.path.isfile(path):
        parser.error(f'--config {path}: file not found')
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        parser.error(f'--config {path}: expected a mapping of option names to values')
    actions = {action.dest: action for action in parser._actions if action.dest not in ('help', 'config')}
    unknown = sorted(set(config) - set(actions))
    if unknown:
        parser.error(f'--config {path}: unknown key(s) {", ".join(unknown)}; keys are main.py option names '
                     'without the leading --, e.g. batch_size, lr, model')
    for key, value in config.items():
        choices = actions[key].choices
        if choices is not None and value not in choices:
            parser.error(f'--config {path}: {key}: {value!r} is not one of {list(choices)}')
    # String values still go through each option's type when argparse applies the defaults; YAML's booleans
    # become the strings the command line would give, so typed options (e.g. `compile: true`) parse them too.
    return {key: str(value).lower() if isinstance(value, bool) and actions[key].type is not None else value
            for key, value in config.items()}


def options_on_command_line(parser, argv):
    """The option names (dests) that argv sets: parsed by a copy of the parser whose defaults are all suppressed."""
    bare = copy.deepcopy(parser)
    bare._defaults = {}
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return set(vars(bare.parse_known_args(argv)[0]))


def parse_args(argv=None):
    """Parse main.py options. Each option comes from, first found: the command line, --config FILE.yaml, the data
    set's spec (its recipe's defaults), main.py's parser defaults (the image recipe). An explicit option the data set
    cannot use is an error, and so is a data set whose pyproject.toml extra is not installed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    config_path = parser.parse_known_args(argv)[0].config
    config = read_config_file(parser, config_path) if config_path else {}
    parser.set_defaults(**config)
    spec = specs.get(parser.parse_known_args(argv)[0].data_set)  # from the command line or the config
    parser.set_defaults(**specs.parser_defaults(spec))
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    error = specs.explicit_option_error(spec, args, options_on_command_line(parser, argv) | set(config),
                                        specs.option_owners())
    if error:
        parser.error(error)
    try:
        specs.require(spec.extra, f'--data_set {spec.name}')
    except specs.MissingExtraError as missing:
        parser.exit(2, f'error: {missing}\n')
    if isinstance(args.model_overrides, str):
        overrides = yaml.safe_load(args.model_overrides)
        if not isinstance(overrides, dict):
            parser.error(f'--model_overrides must be a YAML/JSON dict, got {args.model_overrides!r}')
        args.model_overrides = overrides
    return args


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def model_names():
    """Every accepted --model value."""
    return (timm.list_models('unireplknet_*') + timm.list_models('replknet_*')
            + sorted(replknet.REPLKNET_ALIASES))


def canonical_model_name(name):
    """The registered timm name for --model (maps 'RepLKNet-31B' to 'replknet_31b')."""
    name = replknet.REPLKNET_ALIASES.get(name, name)
    if name not in model_names():
        raise ValueError(f'unknown --model {name!r}; choose one of: {", ".join(model_names())}')
    return name


def build_model(args):
    """Create the --model with the options of this run; --model_overrides adds constructor kwargs.

    The data set's spec adds its backbone kwargs (before --model_overrides) and may build the model to train around
    the backbone (a modality adapter). --sync_bn converts every BatchNorm of the result
    (torch.nn.SyncBatchNorm.convert_sync_batchnorm)."""
    name = canonical_model_name(args.model)
    kwargs = dict(num_classes=args.nb_classes, drop_path_rate=args.drop_path, with_cp=args.use_checkpoint)
    if name.startswith('unireplknet'):
        kwargs.update(layer_scale_init_value=args.layer_scale_init_value, head_init_scale=args.head_init_scale)
    spec = specs.get(args.data_set)
    kwargs.update(spec.backbone_kwargs(args))
    kwargs.update(args.model_overrides or {})
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    model = backbone if spec.build_model is None else spec.build_model(args, backbone)
    if args.sync_bn:  # every BatchNorm of the model, an adapter's included
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def backbone_parameter_prefix(args, model):
    """Where the --model backbone's parameters sit in the model main.py trains (for --layer_decay's layer ids): ''
    for a bare backbone, else the prefix the data set's spec declares (backbone_prefix)."""
    spec = specs.get(args.data_set)
    if spec.build_model is None:
        return ''
    prefix = spec.backbone_prefix
    if not prefix or not any(name.startswith(prefix) for name, _ in model.named_parameters()):
        raise ValueError(f'--layer_decay needs the backbone inside the --data_set {args.data_set} model, and its spec '
                         f'declares no backbone_prefix that names its parameters (found {prefix!r}); '
                         'pass --layer_decay 1.0')
    return prefix


def load_finetune_weights(args, model):
    """--finetune: load weights non-strictly; a classifier head of another shape is left out."""
    print(f'Load pre-trained checkpoint from: {args.finetune}')
    checkpoint = load_checkpoint_file(args.finetune, unsafe=args.unsafe_load_checkpoint)
    state_dict = dict(select_model_state(checkpoint, args.model_key, args.model_prefix))
    backbone_prefix = specs.get(args.data_set).backbone_prefix
    if not set(state_dict) & set(model.state_dict()) and backbone_prefix:
        # A modality adapter (point clouds, time series) around the backbone: an image checkpoint fits its backbone.
        print(f'Loading {args.finetune} into {type(model).__name__}.{backbone_prefix.rstrip(".")}')
        model = model.get_submodule(backbone_prefix.rstrip('.'))
    own = model.state_dict()
    for key in ('head.weight', 'head.bias'):
        if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
            print(f'Removing key {key} from pretrained checkpoint (shape {tuple(state_dict[key].shape)} '
                  f'vs {tuple(own[key].shape)})')
            del state_dict[key]
    if not set(state_dict) & set(own):
        raise CheckpointError(
            f'--finetune {args.finetune}: none of its {len(state_dict)} keys is a key of {args.model} '
            f'(first keys: {list(state_dict)[:3]}); check --model, --model_key and --model_prefix')
    missing, unexpected = load_model_state(model, state_dict, strict=False, source=args.finetune)
    if missing:
        print(f'Weights of {type(model).__name__} not initialized from pretrained model: {missing}')
    if unexpected:
        print(f'Weights from pretrained model not used in {type(model).__name__}: {unexpected}')


def compiled(model, backend):
    """--compile: a torch.compile wrapper (the model itself, its state_dict keys and its EMA stay un-compiled).

    Static shapes: a run's batch and input size are fixed, and with automatic dynamic shapes inductor (torch 2.14)
    fails on UniRepLKNet's CPU paths once the blocks of several stages (different sizes) have been traced.
    """
    return torch.compile(model, backend=backend, dynamic=False)


def inference_model(model, reparam, compile_with=''):
    """The model to evaluate: a structurally re-parameterised copy with --reparam, else the model; compiled with
    --compile."""
    if reparam:
        model = reparameterize_model(copy.deepcopy(model).eval())
    return compiled(model, compile_with) if compile_with else model


def evaluate_and_keep_best(task, model, data_loader_val, args, device, precision, checkpointer, epoch, ema):
    """Evaluate the model (or its EMA) after an epoch on `device`; write checkpoint-best(-ema) when the task's score
    improves (checkpointer.max_accuracy(_ema) holds the best task.score: top-1, or minus the MSE)."""
    what, best_attr, best_name = ('model EMA', 'max_accuracy_ema', 'best-ema') if ema else \
        ('model', 'max_accuracy', 'best')
    stats = task.evaluate(data_loader_val, inference_model(model, args.reparam, args.compile), device, precision,
                          distributed=args.dist_eval, channels_last=args.channels_last)
    # Rank 0's numbers on every rank: all ranks then take the same decision and enter Checkpointer.save (collective)
    # together, also with --dist_eval false (each rank evaluated alone) and in float ties.
    stats = utils.broadcast_object(stats)
    print(task.summary(what, stats))
    if task.score(stats) > getattr(checkpointer, best_attr):
        setattr(checkpointer, best_attr, task.score(stats))
        checkpointer.save_best(epoch, best_name)
    print(task.best_summary(what, getattr(checkpointer, best_attr)))
    return stats


def stop_if_requested(device, where, checkpointer=None, epoch=None, steps_done=None):
    """A stop request (preemption, utils.request_stop) between training steps: the ranks agree on it (one tiny
    all-reduce); with a checkpointer, a step checkpoint at (epoch, steps_done) is written first; then every
    rank raises utils.TrainingInterrupted. Training steps check on their own (engine.py)."""
    if not utils.any_rank_true([utils.stop_requested()], device)[0]:
        return
    if checkpointer is not None:
        checkpointer.save_periodic(epoch, steps_done)
    utils.barrier()
    print(f'Stop requested: stopping {where}' + ('' if checkpointer is None or not checkpointer.enabled else
                                                 f', checkpoint written at epoch {epoch}, step {steps_done}.'))
    raise utils.TrainingInterrupted(f'stopped {where}')


def evaluates_after(epoch, args):
    """Whether training evaluates after `epoch` (0-based): every --eval_freq-th finished epoch from
    --eval_start_epoch on, and every epoch once epochs - --eval_last_epochs are finished (as the release's point-cloud
    trainer, Point/tool/train_adaptor_lkv.py: eval_freq, val_epoch, last_epochs)."""
    finished = epoch + 1
    if finished >= args.epochs - args.eval_last_epochs:
        return True
    return finished >= args.eval_start_epoch and finished % args.eval_freq == 0


def should_stop_early(scores, patience):
    """--early_stop_patience: True once the last `patience` scores (higher is better) all failed to beat the best
    score before them."""
    if patience <= 0 or not scores:
        return False
    first_best = scores.index(max(scores))
    return len(scores) - 1 - first_best >= patience


def logged_scores(task, log_path):
    """task.score of each epoch's evaluation in log.txt (a resumed run continues --early_stop_patience), read by
    rank 0 (which writes the file) and sent to every rank, so that all ranks stop at the same epoch."""
    scores = []
    if log_path and utils.is_main_process() and os.path.isfile(log_path):
        with open(log_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        scores = [task.score({key[len('test_'):]: value for key, value in line.items() if key.startswith('test_')})
                  for line in lines if 'test_loss' in line]
    return utils.broadcast_object(scores)


# --------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------

def check_device(args):
    if str(args.device).startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'--device {args.device} but CUDA is not available (torch.cuda.is_available() is '
                           'False); pass --device cpu')


def select_device(args):
    if str(args.device).startswith('cuda') and args.distributed:
        return torch.device('cuda', args.gpu)
    return torch.device(args.device)


def configure_tf32(enabled, device):
    """--tf32: TF32 for float32 matmuls and cuDNN convolutions on CUDA, as the release had (torch <= 1.11 enabled
    both by default; today's torch only the convolutions). Nothing changes on other devices."""
    if device.type != 'cuda':
        return
    torch.set_float32_matmul_precision('high' if enabled else 'highest')
    torch.backends.cudnn.allow_tf32 = enabled
    print(f'TF32 {"on" if enabled else "off (--tf32 false)"} for float32 matmuls and cuDNN convolutions on CUDA')


def check_options(args, device):
    if args.sync_bn and args.distributed and device.type != 'cuda':
        raise ValueError('--sync_bn true needs CUDA: PyTorch SyncBatchNorm does not run on CPU tensors. '
                         'Drop --sync_bn on CPU.')
    if args.update_freq < 1:
        raise ValueError(f'--update_freq must be at least 1, got {args.update_freq}')
    if args.eval_freq < 1:
        raise ValueError(f'--eval_freq must be at least 1, got {args.eval_freq}')
    if args.eval and args.disable_eval:
        raise ValueError('--eval true with --disable_eval true leaves nothing to do; drop --disable_eval')
    if args.compile and args.compile not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f'--compile {args.compile}: not a torch.compile backend; choose one of '
                         f'{", ".join(torch._dynamo.list_backends(exclude_tags=()))} (bare --compile: inductor)')
    if args.compile and args.use_checkpoint:
        # TorchDynamo cannot trace torch.utils.checkpoint with a context_fn, which both models use to keep BN
        # statistics from being counted twice; the models mark those calls torch.compiler.disable.
        print('--compile with --use_checkpoint: the checkpointed blocks run eagerly (TorchDynamo cannot trace '
              'checkpoint with a context_fn), the rest is compiled')
    if args.mesa and not args.model_ema:
        raise ValueError(f'--mesa {args.mesa} needs --model_ema true: the EMA model is the MESA teacher')
    if args.model_ema_force_cpu and args.model_ema_eval and args.dist_eval and args.distributed \
            and device.type == 'cuda':
        raise ValueError('--model_ema_force_cpu true with --model_ema_eval true evaluates the EMA on the CPU, and '
                         'NCCL cannot sum the CPU evaluation counts of --dist_eval true: pass --dist_eval false '
                         '(every rank evaluates the whole set) or drop --model_ema_force_cpu')


def build_mesa(args, task, total_updates):
    """--mesa: the EMA-teacher term of mesa.py, or None."""
    if not args.mesa:
        return None
    if not task.tracks_train_accuracy:  # the classification tasks
        raise ValueError(f'--mesa distils class probabilities, but --data_set {args.data_set} is not a '
                         'classification task; drop --mesa')
    return Mesa(args.mesa, args.mesa_start_ratio, total_updates)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def loader_generator_seed(seed, epoch):
    """Seed of the DataLoader's own generator (worker base seed), a function of (seed, epoch) only,
    so creating an iterator never consumes the global torch RNG that training uses."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def repeats_in_batch(args):
    """How many copies of each sample one DataLoader batch holds (--repeated_aug with --repeated_aug_scope batch)."""
    return args.repeated_aug if args.repeated_aug_scope == 'batch' else 1


def build_train_loader(dataset_train, args, world_size, rank, generator, pin_memory=False, collate_fn=None):
    """(DataLoader, optimizer steps per epoch) of the training set on this rank.

    A step is --batch_size x --update_freq x world size samples: with --repeated_aug R the data set lists every sample
    R times (datasets.RepeatedSamples) and an epoch has len(data set) / R / that many steps. --repeated_aug_scope
    batch (the release's video recipe) puts the R copies of a sample in one batch of batch_size x R, so a step holds
    R x as many copies and an epoch sees every sample; ranks deals the copies out to the ranks (timm's order)."""
    total_batch_size = args.batch_size * args.update_freq * world_size
    steps_per_epoch = len(dataset_train) // args.repeated_aug // total_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'the training set has {len(dataset_train) // args.repeated_aug} samples, fewer than one '
                         f'total batch ({args.batch_size} x update_freq {args.update_freq} x {world_size} processes '
                         f'= {total_batch_size}); lower --batch_size or --update_freq')
    loader_batch_size = args.batch_size * repeats_in_batch(args)
    sampler_options = dict(num_replicas=world_size, rank=rank, seed=args.seed,
                           samples_per_epoch=steps_per_epoch * args.update_freq * loader_batch_size)
    if args.repeated_aug == 1:
        sampler = utils.ResumableTrainSampler(dataset_train, **sampler_options)
    elif args.repeated_aug_scope == 'batch':
        sampler = utils.RepeatedInBatchSampler(dataset_train, repeats=args.repeated_aug, **sampler_options)
    else:
        sampler = utils.RepeatedAugmentationSampler(dataset_train, repeats=args.repeated_aug, **sampler_options)
    loader = torch.utils.data.DataLoader(
        dataset_train, sampler=sampler, batch_size=loader_batch_size, num_workers=args.num_workers,
        pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn, generator=generator,
        worker_init_fn=utils.ignore_stop_signals)
    return loader, steps_per_epoch


def build_mixup(args):
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    print('Mixup is activated!')
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                  label_smoothing=args.smoothing, num_classes=args.nb_classes)
    batch_mixing = specs.get(args.data_set).batch_mixing  # e.g. video: mixing per frame, as the release
    return mixup if batch_mixing is None else batch_mixing(mixup, args)


def build_criterion(args, mixup_fn):
    if args.loss == 'bce':  # one-vs-rest (the audio recipe): takes class indices, one-hot or mixed targets
        return BinaryCrossEntropy(smoothing=args.smoothing)
    if specs.get(args.data_set).soft_targets:
        return SoftTargetCrossEntropy()  # the data set itself yields probability vectors (e.g. waveform mixup)
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()  # smoothing is applied inside Mixup's targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


@torch.no_grad()
def throughput_batch(args, device):
    """--throughput's input: random images at --input_size for image data sets. The other modalities' models take
    what only their data reader makes (spectrograms, frame grids, point clouds, series windows), so there the batch
    repeats the first evaluation sample (its first view), read from --data_path; that also sets --nb_classes."""
    spec = specs.get(args.data_set)
    if spec.image_input:
        return torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    dataset, args.nb_classes = build_dataset(is_train=False, args=args)
    sample = dataset[0][0]
    if spec.eval_views(args) > 1:
        sample = sample[0]
    return sample.unsqueeze(0).expand(args.batch_size, *sample.shape).contiguous().to(device)


def measure_throughput(args, device):
    """--throughput: samples per second of inference (torch.inference_mode) at --batch_size (and --input_size for
    images), then exit."""
    images = throughput_batch(args, device)
    model = inference_model(build_model(args).to(device).eval(), args.reparam, args.compile)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    precision = Precision(device, args.use_amp, args.amp_dtype)

    def synchronize():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    # inference_mode: no autograd bookkeeping, and the models take their checkpoint path only when grad is enabled.
    with torch.inference_mode(), precision.autocast():
        for _ in range(THROUGHPUT_WARMUP_ITERS):
            model(images)
        synchronize()
        start = time.perf_counter()
        for _ in range(THROUGHPUT_TIMED_ITERS):
            model(images)
        synchronize()
    elapsed = time.perf_counter() - start
    throughput = args.batch_size * THROUGHPUT_TIMED_ITERS / elapsed
    print(f'{args.model}{" (reparameterized)" if args.reparam else ""}: throughput {throughput:.1f} img/s '
          f'(batch {args.batch_size}, input {tuple(images.shape[1:])}, {device}, '
          f'{"amp " + args.amp_dtype if args.use_amp else "float32"})')
    return throughput


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------

def main(args):
    canonical_model_name(args.model)  # an unknown --model fails here, before any data is read
    check_device(args)
    utils.init_distributed_mode(args)
    device = select_device(args)
    stop_if_requested(device, 'after the distributed start')  # nothing trained yet: nothing to save
    check_options(args, device)
    spec = specs.get(args.data_set)
    print(json.dumps(to_plain_data(args), indent=1))
    print(f'--data_set {spec.name} defaults (used where neither a flag nor --config sets the option): '
          f'{specs.parser_defaults(spec)}')
    configure_tf32(args.tf32, device)
    seed_everything(args.seed + utils.get_rank())
    cudnn.benchmark = not args.deterministic
    if args.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # reproducible cuBLAS (before its first use)
        cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)

    if args.throughput:
        return measure_throughput(args, device)

    if args.output_dir and utils.is_main_process():
        os.makedirs(args.output_dir, exist_ok=True)
        if not args.eval:  # --eval may look at a directory that a running training writes into
            remove_stale_temporaries(args.output_dir)
    world_size, rank = utils.get_world_size(), utils.get_rank()

    # ---------------- data ----------------
    dataset_train = None
    if not args.eval:
        dataset_train, args.nb_classes = build_dataset(is_train=True, args=args)
    dataset_val = None
    if args.disable_eval:
        args.dist_eval = False
    else:
        dataset_val, args.nb_classes = build_dataset(is_train=False, args=args)

    collate_fn = collate_skipping_corrupt if args.skip_corrupt_images else None
    eval_collate_fn = functools.partial(collate_skipping_corrupt, keep_even=False) if args.skip_corrupt_images \
        else None  # evaluation keeps every readable sample (no even batches needed: no mixup)
    pin_memory = args.pin_mem and device.type == 'cuda'
    loader_generator = torch.Generator()
    total_batch_size = args.batch_size * args.update_freq * world_size
    steps_per_epoch = 0
    if dataset_train is not None:
        data_loader_train, steps_per_epoch = build_train_loader(
            dataset_train, args, world_size, rank, generator=loader_generator, pin_memory=pin_memory,
            collate_fn=collate_fn)
        sampler_train = data_loader_train.sampler
    if dataset_val is not None:
        if args.dist_eval and args.distributed:
            sampler_val = utils.UnpaddedDistributedSampler(dataset_val, num_replicas=world_size, rank=rank)
        else:
            sampler_val = torch.utils.data.SequentialSampler(dataset_val)
        data_loader_val = torch.utils.data.DataLoader(
            dataset_val, sampler=sampler_val, batch_size=int(1.5 * args.batch_size),
            num_workers=args.num_workers, pin_memory=pin_memory, drop_last=False, collate_fn=eval_collate_fn,
            generator=loader_generator, worker_init_fn=utils.ignore_stop_signals)
    if args.skip_corrupt_images and args.distributed:  # a batch of only unreadable images stops every rank
        if dataset_train is not None:
            data_loader_train = RankAgreedBatches(data_loader_train, device, every_batch=True)
        if dataset_val is not None:
            data_loader_val = RankAgreedBatches(data_loader_val, device, every_batch=False)
    task = ClassificationTask(build_criterion) if spec.build_task is None else spec.build_task(args)
    mixup_fn = build_mixup(args) if not args.eval and spec.mixup else None

    # ---------------- model ----------------
    model = build_model(args)
    if args.finetune:
        load_finetune_weights(args, model)
    model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # --model_ema_force_cpu: the EMA stays on the CPU and is evaluated there (CUDA autocast leaves CPU ops in float32).
    ema_device = torch.device('cpu') if args.model_ema_force_cpu else device
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f'Model = {args.model}')
    print(f'number of params: {n_parameters}')
    print(f'LR = {args.lr:.8f}')
    print(f'Batch size = {total_batch_size}' + (f' samples, {total_batch_size * args.repeated_aug} augmented copies'
                                               if repeats_in_batch(args) > 1 else ''))
    print(f'Update frequent = {args.update_freq}')
    print(f'Number of training examples = {len(dataset_train) if dataset_train is not None else 0}')
    print(f'Number of training steps per epoch = {steps_per_epoch}')

    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == 'cuda' else None, find_unused_parameters=False)
        model_without_ddp = model.module
    # After the DDP wrap (which broadcasts rank 0's weights), so that every rank starts the same EMA (the original
    # built it before, from each rank's own initialisation); utils.ModelEma keeps the ranks' EMAs equal.
    model_ema = None
    if args.model_ema:
        model_ema = utils.ModelEma(model_without_ddp, decay=args.model_ema_decay,
                                   device=ema_device if args.model_ema_force_cpu else None)
        print(f'Using EMA with decay = {args.model_ema_decay:.8f}')
    if args.compile:  # training only; model_without_ddp (checkpointed, evaluated, EMA source) stays un-compiled
        print(f'Training with torch.compile (backend {args.compile}, static shapes)')
        model = compiled(model, args.compile)

    assigner = None if args.layer_decay == 1.0 else layer_decay_assigner(
        canonical_model_name(args.model), args.layer_decay, backbone_parameter_prefix(args, model_without_ddp))
    if assigner is not None:
        print(f'Assigned values = {assigner.values}')
    optimizer = create_optimizer(
        args, model_without_ddp,
        get_num_layer=assigner.get_layer_id if assigner is not None else None,
        get_layer_scale=assigner.get_scale if assigner is not None else None)
    precision = Precision(device, args.use_amp, args.amp_dtype)
    checkpointer = Checkpointer(args, model_without_ddp, optimizer, precision, model_ema, steps_per_epoch)
    checkpointer.max_accuracy = checkpointer.max_accuracy_ema = task.initial_best
    # With args (model, input size, data set and its options) the names make a checkpoint usable by tools/predict.py.
    checkpointer.class_names = class_names(dataset_train if dataset_train is not None else dataset_val,
                                           args.label_map)

    # ---------------- resume ----------------
    start_epoch, start_step = checkpointer.resume()

    if args.eval:
        test_stats = task.evaluate(data_loader_val,
                                   inference_model(model_without_ddp, args.reparam, args.compile), device,
                                   precision, distributed=args.dist_eval, channels_last=args.channels_last)
        print(task.summary('network', test_stats))
        if args.skip_corrupt_images:  # --dist_eval: each rank read its own part; otherwise each read them all
            skipped = count_skipped(dataset_val)
            skipped = utils.sum_over_ranks(skipped, device) if args.dist_eval else skipped
            print(f'--skip_corrupt: {skipped} unreadable evaluation samples skipped')
        if model_ema is not None and args.model_ema_eval:
            ema_stats = task.evaluate(data_loader_val,
                                      inference_model(model_ema.module, args.reparam, args.compile), ema_device,
                                      precision, distributed=args.dist_eval, channels_last=args.channels_last)
            print(task.summary('EMA model', ema_stats))
        utils.barrier()
        return test_stats

    # ---------------- schedules, loss, loggers ----------------
    if args.lr_schedule == 'step':
        lr_schedule = step_scheduler(args.lr, args.lr_step_gamma, args.epochs, steps_per_epoch,
                                     first_decayed_epoch=args.lr_step_first_epoch)
    else:
        lr_schedule = cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch,
                                       warmup_epochs=args.warmup_epochs, warmup_steps=args.warmup_steps)
    weight_decay_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = cosine_scheduler(args.weight_decay, weight_decay_end, args.epochs, steps_per_epoch)
    print(f'Max WD = {max(wd_schedule):.7f}, Min WD = {min(wd_schedule):.7f}')
    criterion = task.criterion(args, mixup_fn)
    print(f'criterion = {criterion}')
    mesa = build_mesa(args, task, args.epochs * steps_per_epoch)

    log_writer = wandb_logger = None
    if utils.is_main_process():
        if args.log_dir:
            os.makedirs(args.log_dir, exist_ok=True)
            log_writer = metric_logging.TensorboardLogger(args.log_dir)
        if args.enable_wandb:
            wandb_logger = metric_logging.WandbLogger(args)
    log_path = os.path.join(args.output_dir, 'log.txt') if args.output_dir else None
    if log_path and utils.is_main_process():
        metric_logging.drop_log_lines_from_epoch(log_path, start_epoch)
    scores = logged_scores(task, log_path)

    # ---------------- training ----------------
    print(f'Start training for {args.epochs} epochs')
    start_time = time.time()
    for epoch in range(start_epoch, args.epochs):
        if should_stop_early(scores, args.early_stop_patience):
            print(f'Early stopping: no better evaluation in the last {args.early_stop_patience} epochs')
            break
        first_step = start_step if epoch == start_epoch else 0
        dataset_train.set_epoch(epoch)  # datasets.SeededAugmentation: this epoch's augmentation seeds
        sampler_train.set_epoch(epoch, start_sample=first_step * args.update_freq * data_loader_train.batch_size)
        loader_generator.manual_seed(loader_generator_seed(args.seed, epoch))
        train_stats = train_one_epoch(
            model, criterion, data_loader_train, optimizer, precision, device, epoch,
            steps_per_epoch=steps_per_epoch, lr_schedule=lr_schedule, wd_schedule=wd_schedule,
            start_step=first_step, update_freq=args.update_freq, clip_grad=args.clip_grad, mixup_fn=mixup_fn,
            model_ema=model_ema, log_writer=log_writer, channels_last=args.channels_last,
            track_accuracy=task.tracks_train_accuracy, mesa=mesa,
            save_every_steps=args.save_ckpt_every_steps if checkpointer.enabled else 0,
            save_step_checkpoint=checkpointer.save_periodic if checkpointer.enabled else None)

        stop_if_requested(device, 'before the evaluation', checkpointer, epoch, steps_per_epoch)
        log_stats = {**{f'train_{k}': v for k, v in train_stats.items()}, 'epoch': epoch,
                     'n_parameters': n_parameters}
        if args.skip_corrupt_images:  # cumulative over the run (since the last start), all ranks' loaders together
            log_stats['train_skipped_images'] = utils.sum_over_ranks(count_skipped(dataset_train), device)
        if dataset_val is not None and evaluates_after(epoch, args):
            utils.broadcast_buffers(model_without_ddp)  # rank 0's BatchNorm statistics: one model is evaluated
            test_stats = evaluate_and_keep_best(task, model_without_ddp, data_loader_val, args, device, precision,
                                                checkpointer, epoch, ema=False)
            scores.append(task.score(test_stats))
            log_stats.update({f'test_{k}': v for k, v in test_stats.items()})
            if log_writer is not None:
                log_writer.update(head='perf', step=epoch,
                                  **{f'test_{k}': v for k, v in task.tensorboard_values(test_stats).items()})
            if model_ema is not None and args.model_ema_eval:
                stop_if_requested(device, 'before the EMA evaluation', checkpointer, epoch, steps_per_epoch)
                ema_stats = evaluate_and_keep_best(task, model_ema.module, data_loader_val, args, ema_device,
                                                   precision, checkpointer, epoch, ema=True)
                log_stats.update({f'test_{k}_ema': v for k, v in ema_stats.items()})
                if log_writer is not None:
                    log_writer.update(head='perf', step=epoch,
                                      **{f'test_{k}_ema': v for k, v in task.tensorboard_values(ema_stats).items()})

        # The log line goes before the epoch checkpoint: a resume from an older checkpoint drops the lines
        # of the epochs it repeats (metric_logging.drop_log_lines_from_epoch), so each epoch is logged once.
        if utils.is_main_process():
            if log_path:
                metric_logging.append_json_line(log_path, log_stats)
            if log_writer is not None:
                log_writer.flush()
            if wandb_logger is not None:
                wandb_logger.log_epoch(log_stats, epoch)
        # A stop requested during the evaluation gets this epoch's checkpoint, also between --save_ckpt_freq epochs.
        stop = utils.any_rank_true([utils.stop_requested()], device)[0]
        if stop or (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs:
            checkpointer.save_periodic(epoch)
        stop_if_requested(device, f'after the checkpoint of epoch {epoch}')

    if wandb_logger is not None:
        if args.wandb_ckpt and args.output_dir:
            wandb_logger.upload_checkpoints(args.output_dir)
        wandb_logger.finish()
    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    print(f'Training time {total_time}')
    utils.barrier()
    return checkpointer.max_accuracy


if __name__ == '__main__':
    cli_args = parse_args()
    try:
        main(cli_args)
    except (utils.NonFiniteLossError, CheckpointError, FileNotFoundError, ShardError) as error:
        sys.exit(f'error: {error}')
    finally:
        if utils.is_dist_avail_and_initialized():
            torch.distributed.destroy_process_group()
