"""Shared pytest setup: make the repository root importable and keep CPU runs deterministic."""
import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='module')
def single_thread():
    """Run a module's in-process tensors on one thread (opt in with
    `pytestmark = pytest.mark.usefixtures('single_thread')`): with tiny tensors on 2 shared cores, OpenMP's default of
    one thread per core makes each op wait for descheduled threads. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def skip_unless_ci(reason):
    """Skip with the reason when a test's Debian extra (espeak-ng, flite, sox, SLURM, g++) or the libcgal-demo meshes
    are missing; fail instead when the CI variable is set, since .ci/run installs them and a skip would hide that."""
    if os.environ.get('CI'):
        pytest.fail(f'{reason}; CI is set, so .ci/run should have provided it')
    pytest.skip(reason)
