"""Shared pieces of the training tests: tiny models, a tiny image folder, main.py subprocess runs, and a hostile
pickle."""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One block per stage: a 3x3 SmaK block, Dilated Reparam Blocks (K=7) and BatchNorms, so RNG (drop path),
# BN statistics and reparameterisation are all exercised while a step takes milliseconds.
TINY_UNIREPLKNET = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "kernel_sizes": [[3], [7], [7], [3]]}'
# No blocks, hence no BatchNorm: stem/downsample convs, LayerNorms and the head. Every layer treats
# samples independently, so splitting a batch over ranks or micro-batches must not change the update.
BATCH_INDEPENDENT_UNIREPLKNET = '{"depths": [0, 0, 0, 0], "dims": [8, 16, 24, 32], "kernel_sizes": [[], [], [], []]}'

IMAGE_SIZE = 16
NUM_CLASSES = 3



@torch.no_grad()
def randomise_batch_norms(model):
    """BatchNorms with statistics and affine parameters that are not the identity, so that re-parameterisation has
    something to fold (a fresh BN's zero mean and bias would hide a bias left out of a fused kernel)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    return model


def write_image_folder(root, images_per_class, seed):
    """root/class_k/*.png, 16x16 RGB: each class a different dominant colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for label in range(NUM_CLASSES):
        folder = os.path.join(root, f'class_{label}')
        os.makedirs(folder, exist_ok=True)
        for index in range(images_per_class):
            pixels = rng.integers(0, 96, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
            pixels[..., label] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f'{index}.png'))
    return root


def make_tiny_dataset(base_dir):
    """48 training images and 21 validation images (odd, so 2 ranks cannot split them evenly)."""
    train = write_image_folder(os.path.join(base_dir, 'train'), images_per_class=16, seed=0)
    val = write_image_folder(os.path.join(base_dir, 'val'), images_per_class=7, seed=1)
    return train, val


def tiny_data_args(train_dir, val_dir):
    """main.py options for the tiny image folder on CPU.

    The release's default augmentation (RandAugment, colour jitter, random crop/flip, random erasing) stays
    on, seeded per sample.
    """
    return ['--data_set', 'image_folder', '--data_path', train_dir, '--eval_data_path', val_dir,
            '--nb_classes', str(NUM_CLASSES), '--input_size', str(IMAGE_SIZE), '--device', 'cpu',
            '--num_workers', '0', '--seed', '0']


class CreatesFileWhenUnpickled:
    """Pickles as a call of open(path, 'w'): an unrestricted unpickler creates the file (a stand-in for any code a
    crafted data file could run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def subprocess_env():
    env = dict(os.environ)
    # One thread per process: the test machine has 2 shared cores and OpenMP oversubscription is slow.
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID'):
        env.pop(name, None)
    return env


def main_command(argv, nproc=1, launcher='torch.distributed.run'):
    """`python main.py ...`, or for nproc > 1 `python -m LAUNCHER --nproc_per_node=N main.py ...` with
    LAUNCHER torch.distributed.run (= torchrun) or torch.distributed.launch (the README's form, which
    passes --local-rank=N to the script)."""
    if nproc == 1:
        return [sys.executable, os.path.join(REPO_ROOT, 'main.py'), *argv]
    return [sys.executable, '-m', launcher, f'--nproc_per_node={nproc}', f'--master_port={free_port()}',
            os.path.join(REPO_ROOT, 'main.py'), *argv]


def run_main(argv, nproc=1, launcher='torch.distributed.run', timeout=300):
    """Run main.py to completion; returns the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run(main_command(argv, nproc, launcher), cwd=REPO_ROOT, env=subprocess_env(),
                          timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_succeeded(completed):
    assert completed.returncode == 0, completed.stdout[-4000:]


def run_plain_command(data_set, data_path, sizes, output_dir):
    """`main.py --data_set X --data_path D` with only a tiny model, one epoch on CPU and the data set's sizes (no
    recipe option): it must train and evaluate with the data set's own defaults. Returns main.py's output.
    A one-epoch run has no warm-up: the image and video recipes warm up longer than that (main.py refuses it)."""
    completed = run_main(['--data_set', data_set, '--data_path', data_path, '--model_overrides', TINY_UNIREPLKNET,
                          '--epochs', '1', '--warmup_epochs', '0', '--device', 'cpu', '--num_workers', '0',
                          '--output_dir', output_dir,
                          *sizes], timeout=600)
    assert_succeeded(completed)
    assert 'test_loss' in read_log(output_dir)[-1]
    return completed.stdout


def load_checkpoint(path):
    """Checkpoints must load with the safe loader of torch >= 2.6."""
    return torch.load(path, map_location='cpu', weights_only=True)


def read_log(output_dir):
    with open(os.path.join(output_dir, 'log.txt')) as f:
        return [json.loads(line) for line in f if line.strip()]


def max_abs_difference(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    return max((state_a[key].double() - state_b[key].double()).abs().max().item()
               for key in state_a if state_a[key].is_floating_point())


def assert_bitwise_equal(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def assert_optimizer_states_equal(optimizer_a, optimizer_b):
    assert optimizer_a['state'].keys() == optimizer_b['state'].keys()
    for index, state in optimizer_a['state'].items():
        for name, value in state.items():
            other = optimizer_b['state'][index][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (index, name)
            else:
                assert value == other, (index, name)


# checkpoint.py's test hook: main.py SIGKILLs itself right after writing the checkpoint file of this name.
SIGKILL_AFTER_CHECKPOINT = 'UNIREPLKNET_TEST_SIGKILL_AFTER_CHECKPOINT'


def run_killed_after_each(argv, output_dir, checkpoints, timeout=300):
    """Run main.py with --output_dir output_dir, SIGKILLed right after it writes each of `checkpoints` in turn (the
    same points on a fast and a slow machine), then to the end. Each run after the first must have resumed where
    the previous one was killed. Returns the last run's CompletedProcess."""
    killed_after = None
    for checkpoint in [*checkpoints, None]:
        env = subprocess_env() if checkpoint is None else {**subprocess_env(), SIGKILL_AFTER_CHECKPOINT: checkpoint}
        completed = subprocess.run(main_command([*argv, '--output_dir', output_dir]), cwd=REPO_ROOT, env=env,
                                   timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if checkpoint is None:
            assert_succeeded(completed)
        else:
            assert completed.returncode == -signal.SIGKILL, \
                f'the run was not killed after writing {checkpoint}:\n{completed.stdout[-4000:]}'
            assert os.path.isfile(os.path.join(output_dir, checkpoint))
        if killed_after is not None:
            assert_resumed_from(completed.stdout, output_dir, killed_after)
        killed_after = checkpoint
    return completed


def assert_resumed_from(output, output_dir, checkpoint):
    """main.py's output says it restored output_dir/checkpoint and continued at its position (a run that restarted
    from scratch would end with the same weights, being deterministic)."""
    assert f'Resume checkpoint {os.path.join(output_dir, checkpoint)}\n' in output, output[-4000:]
    epoch, step = re.fullmatch(r'checkpoint-(\d+)(?:-step(\d+))?\.pth', checkpoint).groups()
    continuing = f'Continuing after epoch {epoch}\n' if step is None else f'Continuing at epoch {epoch}, step {step}\n'
    assert continuing in output, output[-4000:]


def assert_same_training_state(checkpoint_a, checkpoint_b):
    """Two checkpoint files hold bitwise-equal model, EMA (when saved) and optimizer states."""
    state_a, state_b = load_checkpoint(checkpoint_a), load_checkpoint(checkpoint_b)
    assert_bitwise_equal(state_a['model'], state_b['model'])
    assert ('model_ema' in state_a) == ('model_ema' in state_b)
    if 'model_ema' in state_a:
        assert_bitwise_equal(state_a['model_ema'], state_b['model_ema'])
    assert_optimizer_states_equal(state_a['optimizer'], state_b['optimizer'])


def assert_layer_decay_and_sync_bn_reach_the_backbone_inside(argv):
    """For a modality adapter's model (main.py's `argv`): --layer_decay gives the backbone's parameters inside the
    wrapper the backbone map's ids and every other parameter the last id (full rate); --sync_bn turns every
    BatchNorm of the model into a SyncBatchNorm, keeping the state_dict's keys. Returns the converted model."""
    import main
    import optim_factory
    args = main.parse_args([*argv, '--layer_decay', '0.8'])
    model = main.build_model(args)
    prefix = main.backbone_parameter_prefix(args, model)
    assigner = optim_factory.layer_decay_assigner(main.canonical_model_name(args.model), 0.8, prefix)
    backbone_ids = set()
    for name, _ in model.named_parameters():
        inside = name.startswith('backbone.')
        expected = optim_factory.unireplknet_layer_id(name[len('backbone.'):]) if inside \
            else optim_factory.NUM_LAYER_IDS - 1
        assert assigner.get_layer_id(name) == expected, name
        backbone_ids.update([expected] if inside else [])
    assert {0, 1, 2, 12} <= backbone_ids  # stem, stages: not every parameter at the last id
    groups = optim_factory.param_groups(model, 0.05, get_num_layer=assigner.get_layer_id,
                                        get_layer_scale=assigner.get_scale)
    assert min(group['lr_scale'] for group in groups) == 0.8 ** 13

    synced = main.build_model(main.parse_args([*argv, '--sync_bn', 'true']))
    norms = [type(module) for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    synced_norms = [type(module) for module in synced.modules()
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and len(synced_norms) == len(norms) and set(synced_norms) == {torch.nn.SyncBatchNorm}
    assert list(synced.state_dict()) == list(model.state_dict())
    return synced
