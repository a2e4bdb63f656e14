"""Reading MMEngine checkpoints with `torch.load(weights_only=True)` (torch >= 2.6), without trusting the file.

Every checkpoint MMEngine 0.10.7 writes holds its MessageHub: `HistoryBuffer` objects with numpy arrays, and each
buffer's dict of statistic methods, pickled as `getattr(HistoryBuffer, 'mean')`. torch >= 2.6 loads with
`weights_only=True` by default and rejects those globals (`Unsupported global: GLOBAL
mmengine.logging.history_buffer.HistoryBuffer`, mmengine issue 1655), so MMEngine's own `load_from`, `resume` and
`tools/test.py` fail on them.

`mmengine_safe_globals()` is the allow-list for exactly those objects: HistoryBuffer, numpy's array / dtype / scalar
reconstruction, and, in place of `builtins.getattr`, a function that only returns HistoryBuffer's own statistic
methods (any other attribute lookup fails the load). Nothing else becomes loadable, so a checkpoint carrying other
code is still refused. Files are read by the project's checkpoint.py (`load_checkpoint_file`).
`allow_mmengine_checkpoints()` adds the list process-wide; `replk_mm.register_mmseg` / `register_mmdet` (every
config's `custom_imports`) call it, which makes MMEngine's loaders work unchanged.
"""
import pickle

import numpy as np
import torch

import checkpoint

# The numpy reconstruction functions, under both names they are pickled with: numpy 1.x (numpy.core) and 2.x
# (numpy._core).
_NUMPY_MULTIARRAY = (getattr(np, '_core', None) or np.core).multiarray
_NUMPY_FUNCTIONS = (_NUMPY_MULTIARRAY._reconstruct, _NUMPY_MULTIARRAY.scalar)
_NUMPY_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray')
# HistoryBuffer's built-in statistics (registered on the class only once a buffer is created).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_statistic(owner, name):
    """Unpickling stand-in for `getattr`: only `HistoryBuffer.<statistic method>`, as MMEngine pickles them."""
    from mmengine.logging import HistoryBuffer
    statistics = {name: getattr(HistoryBuffer, name) for name in _HISTORY_BUFFER_STATISTICS}
    statistics.update(HistoryBuffer._statistics_methods)
    if owner is not HistoryBuffer or name not in statistics:
        raise pickle.UnpicklingError(
            f'Unsupported global: the checkpoint asks for getattr({owner!r}, {name!r}); replk_mm.checkpoints allows '
            f'only the statistic methods of mmengine HistoryBuffer ({sorted(statistics)}).')
    return statistics[name]


def mmengine_safe_globals() -> list:
    """The globals an MMEngine checkpoint needs, for torch.serialization.safe_globals / add_safe_globals."""
    from mmengine.logging import HistoryBuffer
    numpy_globals = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64))]
    numpy_globals += [(function, f'{module}.{function.__name__}')
                      for function in _NUMPY_FUNCTIONS for module in _NUMPY_MODULES]
    return [HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr'), *numpy_globals]


def allow_mmengine_checkpoints():
    """Let every `torch.load(weights_only=True)` of this process read MMEngine checkpoints (see the module doc)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())


def load_checkpoint(path, unsafe: bool = False) -> dict:
    """An MMEngine (or MMCV 1.x) checkpoint file as a dict, on the CPU, through the project's checkpoint reader.

    Safe by default: weights only, plus `mmengine_safe_globals()` when MMEngine is installed (plain state dicts and
    the MMCV 1.x era's released checkpoints need no extra global). unsafe=True unpickles anything: only for files
    whose source you trust. Errors are checkpoint.py's: a refused object, a truncated file and a missing file each
    say so.
    """
    try:
        allowed = mmengine_safe_globals()
    except ImportError:
        allowed = []
    # safe_globals() removes its list on exit: leave out what allow_mmengine_checkpoints() added process-wide.
    registered = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([entry for entry in allowed if entry not in registered]):
        return checkpoint.load_checkpoint_file(str(path), unsafe=unsafe)
