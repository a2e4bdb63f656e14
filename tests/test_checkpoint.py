"""checkpoint.py: safe loading, names and pruning, atomic writes, and the faults clusters cause (a
checkpoint truncated by a killed process or a full disk, a write that fails half-way)."""
import argparse
import errno
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import main
from checkpoint import (CheckpointDownloadError, CheckpointError, Checkpointer, CheckpointWriteError,
                        UnreadableCheckpointError, find_latest_checkpoint, load_checkpoint_file, load_model_state,
                        load_newest_intact_checkpoint, prune_checkpoints, remove_stale_temporaries)
from engine import Precision
from train_helpers import NUM_CLASSES, REPO_ROOT, TINY_UNIREPLKNET, free_port, subprocess_env

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py


def tiny_model(nb_classes=NUM_CLASSES, overrides=TINY_UNIREPLKNET):
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides', overrides,
                                             '--nb_classes', str(nb_classes)]))


# ---------------------------------------------------------------- loading

def test_truncated_checkpoint_is_reported_as_truncated(tmp_path):
    path = tmp_path / 'checkpoint-0.pth'
    torch.save({'model': tiny_model().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UnreadableCheckpointError, match='truncated or corrupt') as error:
        load_checkpoint_file(str(path))
    # Writes are atomic: a damaged file was copied incompletely or hit a disk error, not killed mid-write.
    assert 'copied or downloaded incompletely' in str(error.value) and 'killed' not in str(error.value)


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """(base URL, served folder) of a local HTTP server, with torch hub's download cache under tmp_path."""
    served = tmp_path / 'served'
    served.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    assert torch.hub.get_dir() == str(tmp_path / 'torch_home' / 'hub')

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', served
    server.shutdown()
    server.server_close()


def test_checkpoint_urls_download_and_failed_downloads_say_so(file_server, tmp_path):
    base, served = file_server
    torch.save({'model': {'weight': torch.arange(3.0)}}, served / 'good.pth')
    assert torch.equal(load_checkpoint_file(f'{base}/good.pth')['model']['weight'], torch.arange(3.0))
    assert os.path.isfile(os.path.join(torch.hub.get_dir(), 'checkpoints', 'good.pth'))   # cached like torch hub

    with pytest.raises(CheckpointDownloadError, match=rf'could not download {base}/missing\.pth \(HTTPError: HTTP '
                                                      r'Error 404.*\)\. Download it .* and pass the local path'):
        load_checkpoint_file(f'{base}/missing.pth')
    unreachable = f'http://127.0.0.1:{free_port()}/model.pth'   # nothing listens: refused, like a host offline
    with pytest.raises(CheckpointDownloadError, match=rf'could not download {unreachable} \(URLError: .*refused'):
        load_checkpoint_file(unreachable)

    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', 'damaged.pth')
    with open(cached, 'wb') as f:
        f.write(b'PK\x03\x04 not a whole zip')
    with pytest.raises(UnreadableCheckpointError, match=f'{cached} is truncated or corrupt'):
        load_checkpoint_file(f'{base}/damaged.pth')


def test_checkpoint_needing_arbitrary_unpickling_names_the_opt_in_flag(tmp_path):
    path = tmp_path / 'pickled.pth'
    torch.save({'model': {}, 'something': argparse.ArgumentParser}, path)
    with pytest.raises(CheckpointError, match='--unsafe_load_checkpoint true'):
        load_checkpoint_file(str(path))
    assert 'something' in load_checkpoint_file(str(path), unsafe=True)


def test_original_release_checkpoint_with_namespace_args_loads_safely(tmp_path):
    path = tmp_path / 'original.pth'
    torch.save({'model': {}, 'epoch': 3, 'args': argparse.Namespace(lr=1.0)}, path)
    assert load_checkpoint_file(str(path))['args'].lr == 1.0


def test_checkpoint_of_another_model_lists_the_differences():
    other = tiny_model(overrides='{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 40], '
                                 '"kernel_sizes": [[3], [7], [7], [3]]}').state_dict()
    with pytest.raises(CheckpointError) as error:
        load_model_state(tiny_model(), other, strict=True, source='other.pth')
    message = str(error.value)
    assert 'shape mismatches' in message and 'checkpoint (40,) vs model (32,)' in message


def dead_process_id():
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


def test_latest_checkpoint_ignores_best_files_and_temporaries(tmp_path):
    host = socket.gethostname()
    dead_writer = f'.checkpoint-3.pth.tmp.{host}.{dead_process_id()}'
    live_writer = f'.checkpoint-3.pth.tmp.{host}.{os.getpid()}'
    other_host = f'.checkpoint-3.pth.tmp.{host}-other-node.{dead_process_id()}'
    for name in ('checkpoint-1.pth', 'checkpoint-2-step3.pth', 'checkpoint-best.pth', 'checkpoint-best-ema.pth',
                 dead_writer, live_writer, other_host, 'checkpoint-10.pth', 'checkpoint-10-step1.pth'):
        (tmp_path / name).write_bytes(b'')
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'checkpoint-10.pth')
    assert find_latest_checkpoint('') is None
    prune_checkpoints(str(tmp_path), keep_epochs=1, just_written=str(tmp_path / 'checkpoint-10.pth'))
    remove_stale_temporaries(str(tmp_path))
    # Only the dead writer's temporary goes: a live process, or one on another host, may still be writing.
    assert sorted(os.listdir(tmp_path)) == sorted(['checkpoint-10.pth', 'checkpoint-best-ema.pth',
                                                   'checkpoint-best.pth', live_writer, other_host])


def test_pruning_keeps_the_checkpoint_just_written_below_older_runs_files(tmp_path):
    """A run restarted from checkpoint-5 while checkpoint-7..9 of the abandoned run remain: its checkpoint-6 stays."""
    for epoch in (5, 7, 8, 9):
        (tmp_path / f'checkpoint-{epoch}.pth').write_bytes(b'')
    (tmp_path / 'checkpoint-6.pth').write_bytes(b'')
    prune_checkpoints(str(tmp_path), keep_epochs=3, just_written=str(tmp_path / 'checkpoint-6.pth'))
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-6.pth', 'checkpoint-7.pth', 'checkpoint-8.pth',
                                            'checkpoint-9.pth']


KILL_DURING_SAVE = """
import sys, torch
from checkpoint import save_on_master
state = {'model': {'w': torch.randn(4_000_000)}}
save_on_master(state, sys.argv[1])
print('first checkpoint written', flush=True)
while True:
    state['model']['w'] += 1
    save_on_master(state, sys.argv[1])
"""


@pytest.mark.slow  # a subprocess killed mid-write
def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / 'checkpoint-0.pth')
    for _ in range(3):  # normally once: retried only if the kill fell between two writes
        process = subprocess.Popen([sys.executable, '-c', KILL_DURING_SAVE, path], cwd=REPO_ROOT,
                                   env=subprocess_env(), stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == 'first checkpoint written'
        time.sleep(0.2 + 0.3 * torch.rand(()).item())
        process.kill()
        process.wait()
        half_written = [name for name in os.listdir(tmp_path) if '.tmp' in name]
        if half_written:
            break
    assert half_written, 'the kill never landed inside a checkpoint write'
    checkpoint = load_checkpoint_file(path)
    assert checkpoint['model']['w'].shape == (4_000_000,)
    # The next run removes the half-written temporary file.
    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == ['checkpoint-0.pth']


# ---------------------------------------------------------------- faults: corrupt files and failed writes

class TrainingState:
    """A small model, optimizer and Checkpointer writing into output_dir, as main.py sets them up."""

    def __init__(self, output_dir, seed):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.model(torch.randn(2, 4)).sum().backward()
        self.optimizer.step()
        args = main.parse_args(['--output_dir', str(output_dir), '--device', 'cpu', '--save_ckpt_num', '5'])
        self.checkpointer = Checkpointer(args, self.model, self.optimizer, Precision('cpu', use_amp=False),
                                         model_ema=None, steps_per_epoch=4)


def write_epochs(output_dir, epochs):
    """Checkpoints of epochs 0..epochs-1, each of different weights; returns each epoch's weight."""
    weights = []
    for epoch in range(epochs):
        state = TrainingState(output_dir, seed=epoch)
        state.checkpointer.save_periodic(epoch)
        weights.append(state.model.weight.detach().clone())
    return weights


CORRUPTIONS = {
    'truncated': lambda data: data[:len(data) // 2],
    'empty': lambda data: b'',
    'garbage': lambda data: bytes(reversed(data)),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_auto_resume_skips_an_unreadable_newest_checkpoint_and_names_it(tmp_path, capsys, corruption):
    weights = write_epochs(tmp_path, epochs=3)
    newest = tmp_path / 'checkpoint-2.pth'
    newest.write_bytes(CORRUPTIONS[corruption](newest.read_bytes()))

    resumed = TrainingState(tmp_path, seed=99)
    assert resumed.checkpointer.resume() == (2, 0)  # continues after epoch 1, the newest intact one
    assert torch.equal(resumed.model.weight, weights[1])
    output = capsys.readouterr().out
    assert f'skipping the unreadable checkpoint {newest}' in output
    assert f'continuing from {tmp_path / "checkpoint-1.pth"}' in output
    # Kept for inspection under another name, out of the way of pruning and of the next resume.
    assert (tmp_path / 'checkpoint-2.pth.corrupt').exists() and not newest.exists()


def test_auto_resume_with_no_intact_checkpoint_starts_from_scratch(tmp_path, capsys):
    write_epochs(tmp_path, epochs=1)
    (tmp_path / 'checkpoint-0.pth').write_bytes(b'PK\x03\x04')
    assert load_newest_intact_checkpoint(str(tmp_path)) == (None, None)
    assert 'continuing from scratch' in capsys.readouterr().out


def test_explicit_resume_of_a_truncated_file_is_an_error_not_a_fallback(tmp_path):
    write_epochs(tmp_path, epochs=2)
    newest = tmp_path / 'checkpoint-1.pth'
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = TrainingState(tmp_path, seed=99)
    resumed.checkpointer.args.resume = str(newest)
    with pytest.raises(UnreadableCheckpointError, match=f'{newest} is truncated or corrupt'):
        resumed.checkpointer.resume()


def fail_with(error_number):
    def fail(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))
    return fail


@pytest.mark.parametrize('where', ['torch.save', 'fsync', 'replace'])
def test_failed_write_keeps_the_previous_checkpoint_and_stops_with_a_clear_error(tmp_path, monkeypatch, where):
    weights = write_epochs(tmp_path, epochs=1)
    before = sorted(os.listdir(tmp_path))
    state = TrainingState(tmp_path, seed=7)
    target = {'torch.save': (torch, 'save'), 'fsync': (os, 'fsync'), 'replace': (os, 'replace')}[where]
    monkeypatch.setattr(*target, fail_with(errno.ENOSPC))

    with pytest.raises(CheckpointWriteError) as error:
        state.checkpointer.save_periodic(1)
    message = str(error.value)
    assert 'checkpoint-1.pth' in message and 'No space left on device' in message
    assert 'previous checkpoints' in message and 'intact' in message
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no new file, no temporary left, nothing pruned
    assert torch.equal(load_checkpoint_file(str(tmp_path / 'checkpoint-0.pth'))['model']['weight'], weights[0])


def test_failed_overwrite_of_the_same_name_keeps_the_old_contents(tmp_path, monkeypatch):
    """checkpoint-best.pth is rewritten in place: a write that fails half-way must not clobber it."""
    first = TrainingState(tmp_path, seed=1)
    first.checkpointer.save_best(0, 'best')
    real_save = torch.save

    def write_half_then_fail(obj, f):  # bytes reach the temporary file, then the disk is full
        real_save(obj, f)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, 'save', write_half_then_fail)
    with pytest.raises(CheckpointWriteError, match='No space left on device'):
        TrainingState(tmp_path, seed=2).checkpointer.save_best(1, 'best')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['checkpoint-best.pth']
    saved = load_checkpoint_file(str(tmp_path / 'checkpoint-best.pth'))
    assert saved['epoch'] == 0 and torch.equal(saved['model']['weight'], first.model.weight)


def distributed_faults(rank, world_size, init_file, output_dir, results):
    """One gloo rank: resume past a truncated checkpoint, then a save whose write fails on rank 0 only."""
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        state = TrainingState(output_dir, seed=99)
        resumed = state.checkpointer.resume()
        if rank == 0:
            os.fsync = fail_with(errno.ENOSPC)  # the write's last step, in this process only (it ends here)
        try:
            state.checkpointer.save_periodic(2)
            outcome = 'saved'
        except CheckpointWriteError as error:
            outcome = str(error)
        results[rank] = (resumed, outcome)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two gloo processes
def test_distributed_ranks_agree_on_the_fallback_and_all_stop_when_rank_0_cannot_write(tmp_path):
    write_epochs(tmp_path, epochs=2)
    newest = tmp_path / 'checkpoint-1.pth'
    newest.write_bytes(newest.read_bytes()[:64])
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(distributed_faults, args=(2, str(tmp_path / 'rendezvous'), str(tmp_path), results),
                                nprocs=2, join=True)
    assert [results[rank][0] for rank in range(2)] == [(1, 0), (1, 0)]  # both resumed after epoch 0
    assert 'No space left on device' in results[0][1]
    assert 'rank 0 could not write checkpoint-2.pth' in results[1][1]  # rank 1 stops too instead of waiting
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith('checkpoint')) == [
        'checkpoint-0.pth', 'checkpoint-1.pth.corrupt']
