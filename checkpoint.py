"""Checkpoints: writing, finding, verifying and restoring the training state, and loading weights.

The one place of the framework that touches checkpoint files; main.py, run_with_submitit.py and the
downstream adapters (segmentation/, detection/) use it. Public API:

- `Checkpointer`: writes and restores main.py's full training state (`save_periodic`, `save_best`,
  `resume`, `restore`).
- `load_checkpoint_file(path, unsafe=False)`: read a file or https URL safely (tensors and plain data).
- `load_newest_intact_checkpoint(output_dir)`: auto-resume's choice, verified by loading it.
- `select_model_state(checkpoint, model_key, model_prefix)` and `load_model_state(model, state_dict,
  strict, source)`: pick the weights inside a checkpoint and load them, reporting every key or shape
  mismatch in one message (the framework's one mismatch reporter; the model files keep their own
  small helper so that each stands alone).
- `load_weights_for_tool(model, checkpoint, path, use_ema)`: what the tools (predict, export, ERF) load: the trained
  weights, or the EMA only when asked, saying which.
- `save_on_master`, `checkpoint_name`, `list_periodic_checkpoints`, `find_latest_checkpoint`,
  `prune_checkpoints`, `remove_stale_temporaries`: the files themselves.
- `capture_rng_state`, `restore_rng_state`, `gather_rng_states`: per-rank random-number states.
- Errors: `CheckpointError` and its kinds `UnreadableCheckpointError` (truncated or corrupt file),
  `CheckpointDownloadError` (a URL that cannot be downloaded) and `CheckpointWriteError` (disk full or
  failed write; the previous checkpoint is intact).

Checkpoints are written by rank 0 only, atomically (temporary file, fsync, ``os.replace``), and contain
only tensors and plain Python data, so ``torch.load(path, weights_only=True)`` reads them:

    model, optimizer, scaler, model_ema (if EMA is on), epoch, step (optimizer updates done in that
    epoch), epoch_done, steps_per_epoch, max_accuracy, max_accuracy_ema, rng_states (one entry per
    rank), args (dict)

File names: ``checkpoint-{epoch}.pth`` once an epoch (training, evaluation and log line) is complete,
``checkpoint-{epoch}-step{step}.pth`` inside an epoch (``--save_ckpt_every_steps`` and stop requests),
``checkpoint-best.pth`` and ``checkpoint-best-ema.pth``. Auto-resume picks the newest position
(epoch, step) that loads, never a 'best' file; a newer file that is truncated or unreadable is named,
renamed to ``*.pth.corrupt`` (kept for inspection, out of the way of pruning) and skipped.
"""
import argparse
import glob
import http.client
import os
import pickle
import random
import re
import signal
import socket
import urllib.parse

import numpy as np
import torch

import utils


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (unsafe to unpickle, of another model, or of another run setup)."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file is truncated, corrupt or cannot be read."""


class CheckpointDownloadError(CheckpointError):
    """A checkpoint URL cannot be downloaded (no network, unknown host, HTTP error, wrong hash)."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error); no existing checkpoint was replaced."""


# --------------------------------------------------------------------------------------------------
# RNG state (per rank) for exact resumption
# --------------------------------------------------------------------------------------------------

def capture_rng_state():
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and plain data."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_cached)),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Set this process's RNGs to a state returned by capture_rng_state()."""
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states():
    """List of every rank's RNG state (collective: all ranks must call it)."""
    state = capture_rng_state()
    if not utils.is_dist_avail_and_initialized():
        return [state]
    states = [None] * utils.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


# --------------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------------

# The original release pickled its argparse.Namespace into every checkpoint; that one harmless class is
# allowed in weights_only loading so those files load without the unsafe opt-in. It is allowed per load
# (a context manager), not process-wide: other code's safe_globals contexts remove on exit what they list.
RELEASE_CHECKPOINT_CLASSES = [argparse.Namespace]

_PERIODIC_NAME = re.compile(r'^checkpoint-(\d+)(?:-step(\d+))?\.pth$')


def checkpoint_name(epoch, step=None):
    """'checkpoint-{epoch}.pth' for a finished epoch, 'checkpoint-{epoch}-step{step}.pth' inside one."""
    return f'checkpoint-{epoch}.pth' if step is None else f'checkpoint-{epoch}-step{step}.pth'


def list_periodic_checkpoints(output_dir):
    """[(position, path)] sorted oldest first; position = (epoch, step), a finished epoch sorts last."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(output_dir), 'checkpoint-*.pth')):
        match = _PERIODIC_NAME.match(os.path.basename(path))
        if match:
            epoch, step = int(match.group(1)), match.group(2)
            found.append(((epoch, float('inf') if step is None else int(step)), path))
    return sorted(found)


def find_latest_checkpoint(output_dir):
    """Path of the newest periodic checkpoint in output_dir, or None ('' means no output dir).

    Only looks at names; `load_newest_intact_checkpoint` also verifies the file.
    """
    if not output_dir:
        return None
    found = list_periodic_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir, keep_epochs, just_written):
    """Keep the newest `keep_epochs` epoch checkpoints and only a step checkpoint newer than all of them; never
    the file `just_written` (the run's resume point, even if files of later positions, say from before a
    restart at an older checkpoint, sort above it)."""
    found = list_periodic_checkpoints(output_dir)
    epoch_files = [path for position, path in found if position[1] == float('inf')]
    doomed = epoch_files[:-keep_epochs] if keep_epochs > 0 else epoch_files
    doomed += [path for position, path in found[:-1] if position[1] != float('inf')]
    for path in doomed:
        if os.path.abspath(path) != os.path.abspath(just_written):
            os.remove(path)


# Temporary names carry the writer's host and process id (".NAME.tmp.HOST.PID"), so that a later start can tell a
# dead writer's leftover from a file another process (a training run on another node, say) is still writing.
_TEMPORARY_NAME = re.compile(r'^\..+\.pth\.tmp\.(?P<host>.+)\.(?P<pid>\d+)$')


def temporary_path(path):
    """Where save_on_master writes `path` before renaming it into place."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f'.{name}.tmp.{socket.gethostname()}.{os.getpid()}')


def remove_stale_temporaries(output_dir):
    """Delete half-written checkpoint files whose writer (on this host) is no longer running.

    Files of a live process, or written on another host (whose processes this one cannot see), are kept.
    """
    host = socket.gethostname()
    for path in glob.glob(os.path.join(glob.escape(output_dir), '.*.pth.tmp.*')):
        match = _TEMPORARY_NAME.match(os.path.basename(path))
        if match and match.group('host') == host and not process_is_running(int(match.group('pid'))):
            os.remove(path)


def process_is_running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def save_on_master(obj, path):
    """Atomically write obj to path on rank 0: temporary file, fsync, then os.replace.

    If anything fails (ENOSPC, an I/O error), the temporary file is removed, `path` and every other
    file keep their previous contents, and CheckpointWriteError says so.
    """
    if not utils.is_main_process():
        return
    directory, name = os.path.split(path)
    tmp_path = temporary_path(path)
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    # torch.save reports a failed write as RuntimeError ("PytorchStreamWriter failed writing file").
    except (OSError, RuntimeError) as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise CheckpointWriteError(
            f'could not write checkpoint {path}: {error}. Nothing was replaced: the previous checkpoints in '
            f'{directory or "."} are intact. Free disk space (or fix the file system) and rerun with the same '
            '--output_dir; auto-resume continues from the newest intact checkpoint.') from error
    # Test hook, set only by the kill-and-resume tests (tests/train_helpers.py): SIGKILL this process right after
    # the checkpoint file of this name is written, so the kill lands at the same point on a fast and a slow machine.
    if os.environ.get('UNIREPLKNET_TEST_SIGKILL_AFTER_CHECKPOINT') == name:
        os.kill(os.getpid(), signal.SIGKILL)


def to_plain_data(value):
    """Convert args values to types torch.load(weights_only=True) accepts (dicts, lists, scalars)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(key): to_plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain_data(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def is_url(path):
    return path.startswith('https://') or path.startswith('http://')


def download_checkpoint(url):
    """Local path of `url` in torch hub's checkpoint cache (torch.hub.get_dir()/checkpoints/<file name>), downloaded
    there when absent, as torch.hub.load_state_dict_from_url does (a '-<sha256 prefix>' in the file name is checked;
    the file appears only once complete). Done here rather than by that function so that a failed download is
    reported as one, and a damaged cached copy by its own path."""
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urllib.parse.urlparse(url).path))
    if os.path.isfile(cached):
        return cached
    hash_prefix = torch.hub.HASH_REGEX.search(os.path.basename(cached))
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, hash_prefix.group(1) if hash_prefix else None, progress=True)
    # OSError covers urllib's URLError/HTTPError (name resolution, refused, 404) and timeouts; HTTPException a
    # connection dropped mid-file; RuntimeError torch's hash check.
    except (OSError, http.client.HTTPException, RuntimeError) as error:
        raise CheckpointDownloadError(
            f'could not download {url} ({type(error).__name__}: {error}). Download it on a machine that can reach it '
            f'(e.g. wget {url}) and pass the local path instead of the URL.') from error
    return cached


def load_checkpoint_file(path, unsafe=False):
    """Read a checkpoint (local path or https URL) onto the CPU.

    Only tensors and plain data are unpickled (weights_only=True; argparse.Namespace, which the
    original release stored, is allowed too). Anything else is refused unless `unsafe` is set
    (--unsafe_load_checkpoint true), because unpickling can run arbitrary code. A URL that cannot be
    downloaded raises CheckpointDownloadError; a truncated, corrupt or unreadable file
    UnreadableCheckpointError naming it (for a URL, its copy in torch hub's cache); a missing one
    FileNotFoundError.
    """
    if is_url(path):
        path = download_checkpoint(path)
    try:
        with torch.serialization.safe_globals(RELEASE_CHECKPOINT_CLASSES):
            if not os.path.isfile(path):
                raise FileNotFoundError(f'checkpoint file {path} does not exist')
            return torch.load(path, map_location='cpu', weights_only=not unsafe)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1]
        if 'Unsupported global' not in str(error):  # garbage bytes, not a class outside the allow-list
            raise UnreadableCheckpointError(f'{path} is corrupt ({reason})') from error
        raise CheckpointError(
            f'{path} contains Python objects other than tensors and plain data ({reason}). '
            'Loading it could run arbitrary code; if you trust the file, add '
            '--unsafe_load_checkpoint true') from error
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableCheckpointError(
            f'{path} is truncated or corrupt ({reason}). Checkpoints are written atomically, so the file was '
            'damaged afterwards: copied or downloaded incompletely, or by a disk or file-system error. Copy it '
            'again from its source (delete it first if it is a download cached by torch hub), or use another '
            'checkpoint.') from error


def load_newest_intact_checkpoint(output_dir, unsafe=False):
    """(path, checkpoint) of the newest periodic checkpoint in output_dir that loads, or (None, None).

    Rank 0 chooses: each candidate is verified by loading it; a truncated or unreadable one is reported
    by name, renamed to `<name>.corrupt` so that pruning and later resumes skip it, and the previous
    checkpoint is tried. The other ranks load the file rank 0 chose (so all ranks resume the same one).
    Collective when distributed: every rank must call it.
    """
    if not output_dir:
        return None, None
    found = None, None
    if utils.is_main_process():
        corrupt = []
        for _, path in reversed(list_periodic_checkpoints(output_dir)):
            try:
                found = path, load_checkpoint_file(path, unsafe)
                break
            except UnreadableCheckpointError as error:
                print(f'Auto-resume: skipping the unreadable checkpoint {path}: {error}', flush=True)
                corrupt.append(path)
        for path in corrupt:
            os.replace(path, f'{path}.corrupt')
            print(f'Auto-resume: renamed {path} to {path}.corrupt', flush=True)
        if corrupt:
            print(f'Auto-resume: continuing from {found[0] or "scratch (no intact checkpoint)"}', flush=True)
    chosen = utils.broadcast_object(found[0])
    if chosen is not None and not utils.is_main_process():
        if not os.path.isfile(chosen):
            raise CheckpointError(f'rank 0 resumes from {chosen}, which this rank (rank {utils.get_rank()}) '
                                  'cannot see: --output_dir must be on a file system that all nodes share')
        found = chosen, load_checkpoint_file(chosen, unsafe)
    return found


# Where released files and timm keep their weights: main.py's checkpoints 'model' (and 'model_ema'), timm's
# training script 'state_dict' (and 'state_dict_ema'), a bare state_dict none of these.
TRAINED_WEIGHT_KEYS = ('model', 'state_dict', 'module')
EMA_WEIGHT_KEYS = ('model_ema', 'state_dict_ema')


def load_weights_for_tool(model, checkpoint, path, use_ema=False):
    """Load the weights of a checkpoint (read by load_checkpoint_file from path) into model, for a tool.

    The trained weights by default; the EMA weights only with use_ema (an error when the file has none). The choice
    is printed either way, so a tool never analyses or exports the EMA without saying so.
    """
    keys = EMA_WEIGHT_KEYS if use_ema else TRAINED_WEIGHT_KEYS
    key = next((key for key in keys if isinstance(checkpoint, dict) and key in checkpoint), None)
    if use_ema and key is None:
        raise CheckpointError(f'{path} has no EMA weights (no {" or ".join(EMA_WEIGHT_KEYS)} entry; main.py writes '
                              'model_ema with --model_ema true); drop --use_ema to use its trained weights')
    state_dict = checkpoint[key] if key is not None else checkpoint
    # DataParallel/DDP files of other code prefix every key with 'module.'.
    if state_dict and all(name.startswith('module.') for name in state_dict):
        state_dict = {name[len('module.'):]: value for name, value in state_dict.items()}
    load_model_state(model, state_dict, strict=True, source=path)
    what = 'EMA weights' if use_ema else 'trained weights (not the EMA)' if any(
        name in checkpoint for name in EMA_WEIGHT_KEYS) else 'trained weights'
    print(f"Loaded the {what} of {path}{f' (entry {key!r})' if key else ''}")


def _limited(items, limit=10):
    shown = ', '.join(str(item) for item in items[:limit])
    return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')


def load_model_state(model, state_dict, strict, source):
    """Load state_dict into model, with a message listing every difference when it does not fit.

    Shape mismatches are always an error. With strict=True missing or unexpected keys are errors too;
    otherwise they are returned as (missing, unexpected) for the caller to report. `source` names the
    checkpoint in the message (a path, or e.g. 'the backbone checkpoint').
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}'
                  for key, value in state_dict.items()
                  if key in own and hasattr(value, 'shape') and value.shape != own[key].shape]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f'{source} does not fit the model {type(model).__name__} (was it saved from another '
                 '--model or other --model_overrides?):']
        if mismatched:
            lines.append(f'  {len(mismatched)} shape mismatches: {_limited(mismatched)}')
        if missing:
            lines.append(f'  {len(missing)} keys missing from the checkpoint: {_limited(missing)}')
        if unexpected:
            lines.append(f'  {len(unexpected)} unexpected keys in the checkpoint: {_limited(unexpected)}')
        raise CheckpointError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=False)
    return missing, unexpected


def select_model_state(checkpoint, model_key='model|module', model_prefix=''):
    """The model state_dict inside a checkpoint: first of the '|'-separated keys present, else the
    whole dict (a bare state_dict); with model_prefix, keep only keys under that prefix, stripped."""
    state_dict = checkpoint
    for key in model_key.split('|'):
        if key in checkpoint:
            print(f'Load state_dict by model_key = {key}')
            state_dict = checkpoint[key]
            break
    if model_prefix:
        state_dict = {key[len(model_prefix):]: value for key, value in state_dict.items()
                      if key.startswith(model_prefix)}
    return state_dict


# --------------------------------------------------------------------------------------------------
# The training state of main.py
# --------------------------------------------------------------------------------------------------

class Checkpointer:
    """Writes and restores main.py's full training state (contents: see the module docstring).

    `args` supplies output_dir, save_ckpt, save_ckpt_num, resume, auto_resume, eval, start_epoch and
    unsafe_load_checkpoint; `precision` is engine.Precision (its GradScaler state is saved).
    """

    def __init__(self, args, model, optimizer, precision, model_ema, steps_per_epoch):
        self.args = args
        self.model = model
        self.optimizer = optimizer
        self.precision = precision
        self.model_ema = model_ema
        self.steps_per_epoch = steps_per_epoch
        self.max_accuracy = 0.0
        self.max_accuracy_ema = 0.0
        self.class_names = None  # saved when set (main.py: the data set's), read by tools/predict.py

    @property
    def enabled(self):
        return bool(self.args.output_dir) and self.args.save_ckpt

    def save(self, name, epoch, step, epoch_done):
        """Collective (every rank contributes its RNG state); rank 0 writes output_dir/name.

        A failed write raises CheckpointWriteError on every rank (the ranks agree on it), so a
        distributed run stops instead of waiting for rank 0.
        """
        rng_states = gather_rng_states()
        write_error = None
        if utils.is_main_process():
            state = {
                'model': self.model.state_dict(),
                'optimizer': self.optimizer.state_dict(),
                'scaler': self.precision.state_dict(),
                'epoch': epoch,
                'step': step,
                'epoch_done': epoch_done,
                'steps_per_epoch': self.steps_per_epoch,
                'max_accuracy': self.max_accuracy,
                'max_accuracy_ema': self.max_accuracy_ema,
                'rng_states': rng_states,
                'args': to_plain_data(self.args),
            }
            if self.model_ema is not None:
                state['model_ema'] = self.model_ema.module.state_dict()
            if self.class_names is not None:
                state['class_names'] = list(self.class_names)
            try:
                save_on_master(state, os.path.join(self.args.output_dir, name))
            except CheckpointWriteError as error:
                write_error = error
        if utils.any_rank_true([write_error is not None], self.precision.device_type)[0]:
            raise write_error or CheckpointWriteError(f'rank 0 could not write {name} (see its error); '
                                                      'the previous checkpoints are intact')

    def save_periodic(self, epoch, step=None):
        """checkpoint-{epoch}.pth after a finished epoch, checkpoint-{epoch}-step{step}.pth inside one."""
        if not self.enabled:
            return
        self.save(checkpoint_name(epoch, step), epoch,
                  self.steps_per_epoch if step is None else step, epoch_done=step is None)
        if utils.is_main_process():
            prune_checkpoints(self.args.output_dir, self.args.save_ckpt_num,
                              just_written=os.path.join(self.args.output_dir, checkpoint_name(epoch, step)))

    def save_best(self, epoch, suffix):
        if self.enabled:
            self.save(f'checkpoint-{suffix}.pth', epoch, self.steps_per_epoch, epoch_done=True)

    def resume(self):
        """Restore --resume, else (with --auto_resume) the newest intact checkpoint of --output_dir.

        Returns (start_epoch, start_step); (args.start_epoch, 0) when there is nothing to resume.
        """
        args = self.args
        resume = utils.broadcast_object(args.resume)  # rank 0's (run_with_submitit.py decides it per task)
        if resume:
            return self.restore(resume, weights_only=args.eval)
        if args.auto_resume:
            path, checkpoint = load_newest_intact_checkpoint(args.output_dir, args.unsafe_load_checkpoint)
            if path is not None:
                return self.restore_state(checkpoint, path, weights_only=args.eval)
        return args.start_epoch, 0

    def restore(self, path, weights_only):
        """Load the checkpoint file at path and restore it (see restore_state)."""
        return self.restore_state(load_checkpoint_file(path, unsafe=self.args.unsafe_load_checkpoint), path,
                                  weights_only)

    def restore_state(self, checkpoint, path, weights_only):
        """Restore a loaded checkpoint; return (start_epoch, start_step) to continue from.

        Released files and bare state_dicts restore the weights only (as does weights_only=True, for
        --eval). Full checkpoints also restore optimizer, scaler, EMA, best accuracies and RNG states.
        """
        state_dict = checkpoint['model'] if 'model' in checkpoint else checkpoint
        load_model_state(self.model, state_dict, strict=True, source=path)
        print(f'Resume checkpoint {path}')
        if self.model_ema is not None:
            # Checkpoints without an EMA (released files, the original's) start it from the restored weights.
            self.model_ema.module.load_state_dict(checkpoint.get('model_ema', self.model.state_dict()))
        if weights_only or 'optimizer' not in checkpoint or not isinstance(checkpoint.get('epoch'), int):
            return self.args.start_epoch, 0

        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.precision.load_state_dict(checkpoint.get('scaler'))
        # A checkpoint without them keeps the caller's starting values (main.py: the task's initial best).
        self.max_accuracy = checkpoint.get('max_accuracy', self.max_accuracy)
        self.max_accuracy_ema = checkpoint.get('max_accuracy_ema', self.max_accuracy_ema)
        rng_states = checkpoint.get('rng_states')
        if rng_states is not None and len(rng_states) == utils.get_world_size():
            restore_rng_state(rng_states[utils.get_rank()])
        else:
            print('The checkpoint has no random-number states for this number of processes: training '
                  'continues correctly but not bit-for-bit like an uninterrupted run.')

        epoch = checkpoint['epoch']
        if checkpoint.get('epoch_done', True):
            print(f'With optim & sched! Continuing after epoch {epoch}')
            return epoch + 1, 0
        step = checkpoint['step']
        if checkpoint.get('steps_per_epoch') != self.steps_per_epoch:
            raise CheckpointError(
                f'{path} was written inside epoch {epoch} with {checkpoint.get("steps_per_epoch")} steps per '
                f'epoch, but this run has {self.steps_per_epoch} (batch size, update_freq or number of '
                'processes changed). Resume with the original settings, or from an end-of-epoch checkpoint.')
        print(f'With optim & sched! Continuing at epoch {epoch}, step {step}')
        return epoch, step
