"""End-to-end main.py runs (subprocesses, CPU, gloo): quickstart accuracy, README commands under torchrun,
DDP / gradient-accumulation equivalence, exact distributed evaluation, kill-and-resume, non-finite loss."""
import os
import re

import pytest
import torch

import main
from train_helpers import (BATCH_INDEPENDENT_UNIREPLKNET, REPO_ROOT, TINY_UNIREPLKNET, assert_bitwise_equal,
                           assert_optimizer_states_equal, assert_succeeded, load_checkpoint, make_tiny_dataset,
                           max_abs_difference, read_log, run_killed_after_each, run_main, tiny_data_args)

pytestmark = pytest.mark.slow  # every test here runs main.py in subprocesses (torchrun / gloo, kill and resume)

# The README quickstart: a small UniRepLKNet (DRB blocks, BN, GRN, SE) on the bundled digits, on CPU, 8 epochs.
QUICKSTART = ['--config', os.path.join(REPO_ROOT, 'configs', 'quickstart_digits.yaml')]
# A working pipeline ends near 88-90% on the 360 validation digits (measured); chance is 10%.
QUICKSTART_MIN_ACCURACY = 80.0


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp('data')))


def test_quickstart_reaches_the_stated_accuracy(tmp_path):
    output_dir, log_dir = str(tmp_path / 'quickstart'), str(tmp_path / 'tb')
    assert_succeeded(run_main([*QUICKSTART, '--output_dir', output_dir, '--log_dir', log_dir], timeout=600))
    log = read_log(output_dir)
    epochs = main.parse_args(QUICKSTART).epochs
    assert [line['epoch'] for line in log] == list(range(epochs))
    assert log[-1]['test_acc1'] >= QUICKSTART_MIN_ACCURACY, log[-1]
    assert {'train_lr', 'train_min_lr', 'train_loss', 'train_weight_decay', 'train_class_acc', 'train_grad_norm',
            'test_loss', 'test_acc1', 'test_acc5', 'epoch', 'n_parameters'} <= set(log[-1])
    assert log[-1]['test_num_images'] == 360
    checkpoint = load_checkpoint(os.path.join(output_dir, f'checkpoint-{epochs - 1}.pth'))  # weights_only=True
    assert {'model', 'optimizer', 'scaler', 'epoch', 'step', 'max_accuracy', 'rng_states', 'args'} <= set(checkpoint)
    assert checkpoint['max_accuracy'] == max(line['test_acc1'] for line in log)
    kept = [f'checkpoint-{epoch}.pth' for epoch in range(epochs - 3, epochs)]  # --save_ckpt_num 3
    assert sorted(os.listdir(output_dir)) == sorted([*kept, 'checkpoint-best.pth', 'log.txt'])
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(log_dir))


# ---------------------------------------------------------------- README commands (python -m torch.distributed.launch)

def test_readme_in1k_command_under_distributed_launch(tiny_data, tmp_path):
    """README UniRepLKNet-A command, scaled down (batch 128 -> 4, update_freq 8 -> 2, tiny model and data)."""
    output_dir = str(tmp_path / 'a')
    argv = ['--model', 'unireplknet_a', '--drop_path', '0.0', '--batch_size', '4', '--lr', '4e-3',
            '--update_freq', '2', '--mixup', '0.3', '--cutmix', '0.3', *tiny_data_args(*tiny_data),
            '--output_dir', output_dir, '--model_overrides', TINY_UNIREPLKNET, '--epochs', '1', '--warmup_epochs', '0']
    completed = run_main(argv, nproc=2, launcher='torch.distributed.launch')
    assert_succeeded(completed)
    assert 'Number of training steps per epoch = 3' in completed.stdout  # 48 // (4 x 2 x 2)
    # Distributed evaluation of 21 images on 2 ranks counts each image exactly once.
    assert read_log(output_dir)[0]['test_num_images'] == 21


def test_readme_finetune_command_under_distributed_launch(tiny_data, tmp_path):
    """README UniRepLKNet-L 22K->1K command, scaled down, from a '22K' checkpoint with another head size."""
    pretrained = tmp_path / 'in22k.pth'
    model = main.build_model(main.parse_args(['--model', 'unireplknet_l', '--model_overrides', TINY_UNIREPLKNET,
                                              '--nb_classes', '7']))
    torch.save({'model': model.state_dict()}, pretrained)
    output_dir = str(tmp_path / 'ft')
    argv = ['--model', 'unireplknet_l', '--drop_path', '0.3', '--input_size', '16', '--batch_size', '4',
            '--lr', '5e-5', '--update_freq', '2', '--model_ema', 'true', '--model_ema_eval', 'true',
            '--warmup_epochs', '0', '--epochs', '1', '--weight_decay', '1e-8', '--smoothing', '0.3',
            '--layer_decay', '0.8', '--head_init_scale', '0.001', '--cutmix', '0', '--mixup', '0',
            '--finetune', str(pretrained), *tiny_data_args(*tiny_data), '--output_dir', output_dir,
            '--model_overrides', TINY_UNIREPLKNET]
    completed = run_main(argv, nproc=2, launcher='torch.distributed.launch')
    assert_succeeded(completed)
    assert 'Removing key head.weight from pretrained checkpoint' in completed.stdout
    assert 'layer_13_no_decay' in completed.stdout  # layer-wise decay groups were built
    log = read_log(output_dir)[0]
    assert 'test_acc1_ema' in log and log['test_num_images'] == 21
    assert os.path.isfile(os.path.join(output_dir, 'checkpoint-best-ema.pth'))
    checkpoint = load_checkpoint(os.path.join(output_dir, 'checkpoint-0.pth'))
    assert checkpoint['model_ema'].keys() == checkpoint['model'].keys()


# ---------------------------------------------------------------- equivalence of batch splits

@pytest.fixture(scope='module')
def split_runs(tiny_data, tmp_path_factory):
    """One epoch of 6 updates of 8 images each: 2 ranks x 4, 1 rank x 8, and 1 rank x 4 x update_freq 2.

    Plain SGD (the update is -lr x gradient): AdamW's update would not change if a split scaled the gradient."""
    base = tmp_path_factory.mktemp('split')
    common = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET,
              *tiny_data_args(*tiny_data), '--epochs', '1', '--warmup_epochs', '0', '--opt', 'momentum',
              '--momentum', '0', '--lr', '0.1', '--mixup', '0', '--cutmix', '0', '--drop_path', '0']
    runs = {}
    for name, nproc, extra in (('ddp', 2, ['--batch_size', '4']), ('single', 1, ['--batch_size', '8']),
                               ('accumulate', 1, ['--batch_size', '4', '--update_freq', '2'])):
        output_dir = str(base / name)
        completed = run_main([*common, *extra, '--output_dir', output_dir], nproc=nproc)
        assert_succeeded(completed)
        assert 'Number of training steps per epoch = 6' in completed.stdout
        runs[name] = output_dir
    return runs


def test_two_process_ddp_equals_one_process_with_twice_the_batch(split_runs):
    """With batch-independent layers (no BatchNorm: its statistics are per rank unless SyncBN, which
    PyTorch supports on CUDA only) DDP's gradient average equals the big batch's mean gradient."""
    ddp = load_checkpoint(os.path.join(split_runs['ddp'], 'checkpoint-0.pth'))['model']
    single = load_checkpoint(os.path.join(split_runs['single'], 'checkpoint-0.pth'))['model']
    assert max_abs_difference(ddp, single) < 1e-6
    assert read_log(split_runs['ddp'])[0]['train_grad_norm'] == \
        pytest.approx(read_log(split_runs['single'])[0]['train_grad_norm'], rel=1e-5)


def test_update_freq_equals_one_batch_of_the_combined_size(split_runs):
    """Loss / update_freq summed over micro-batches is the mean over the combined batch, the LR is set
    once per update, and only the last micro-batch steps the optimizer (plain SGD: an undivided loss doubles each
    update, a step per micro-batch moves the second one's gradient)."""
    accumulated = load_checkpoint(os.path.join(split_runs['accumulate'], 'checkpoint-0.pth'))
    single = load_checkpoint(os.path.join(split_runs['single'], 'checkpoint-0.pth'))
    assert max_abs_difference(accumulated['model'], single['model']) < 1e-6
    assert read_log(split_runs['accumulate'])[0]['train_grad_norm'] == \
        pytest.approx(read_log(split_runs['single'])[0]['train_grad_norm'], rel=1e-5)


def test_distributed_evaluation_equals_single_process(split_runs, tiny_data):
    """21 validation images on 2 ranks: unpadded sampler and summed counts give the 1-process numbers."""
    single_log = read_log(split_runs['single'])[0]
    checkpoint = os.path.join(split_runs['single'], 'checkpoint-0.pth')
    argv = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET, '--batch_size', '8',
            '--eval', 'true', '--resume', checkpoint, *tiny_data_args(*tiny_data)]
    completed = run_main(argv, nproc=2)
    assert_succeeded(completed)
    assert f"Accuracy of the network on 21 test images: {single_log['test_acc1']:.5f}%" in completed.stdout
    loss = float(re.search(r'\* Acc@1 .*? loss (\S+) \(', completed.stdout).group(1))
    assert loss == pytest.approx(single_log['test_loss'], abs=1e-3)


# ---------------------------------------------------------------- kill and resume

EPOCHS = 2


def test_killed_and_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(tiny_data, tmp_path):
    """Mixup/CutMix (numpy RNG), drop path (torch RNG), augmentation, EMA and accumulation all in play;
    the run is SIGKILLed three times after chosen steps and resumed each time."""
    argv = ['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, *tiny_data_args(*tiny_data),
            '--batch_size', '4', '--update_freq', '2', '--epochs', str(EPOCHS), '--warmup_steps', '2',
            '--mixup', '0.3', '--cutmix', '0.3', '--drop_path', '0.1', '--model_ema', 'true',
            '--model_ema_eval', 'true', '--save_ckpt_every_steps', '1']
    uninterrupted = str(tmp_path / 'uninterrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))

    interrupted = str(tmp_path / 'interrupted')
    # 6 steps an epoch (48 images, batch 4 x update_freq 2). SIGKILLed right after global optimizer steps 2, 6 (the
    # end of epoch 0, before its evaluation) and 9, resumed each time. (Kills inside a checkpoint write: tests/test_checkpoint.py.)
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step2.pth', 'checkpoint-0-step6.pth',
                                              'checkpoint-1-step3.pth'])

    final = 'checkpoint-1.pth'
    expected = load_checkpoint(os.path.join(uninterrupted, final))
    resumed = load_checkpoint(os.path.join(interrupted, final))
    assert_bitwise_equal(resumed['model'], expected['model'])
    assert_bitwise_equal(resumed['model_ema'], expected['model_ema'])
    assert_optimizer_states_equal(resumed['optimizer'], expected['optimizer'])
    assert resumed['max_accuracy'] == expected['max_accuracy']
    resumed_log, expected_log = read_log(interrupted), read_log(uninterrupted)
    assert [line['epoch'] for line in resumed_log] == list(range(EPOCHS))
    assert [line['test_acc1_ema'] for line in resumed_log] == [line['test_acc1_ema'] for line in expected_log]


# ---------------------------------------------------------------- failures

def test_non_finite_loss_stops_every_rank_without_a_checkpoint(tiny_data, tmp_path):
    output_dir = str(tmp_path / 'nan')
    argv = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET,
            *tiny_data_args(*tiny_data), '--batch_size', '4', '--epochs', '1', '--warmup_epochs', '0',
            '--lr', '1e30', '--mixup', '0', '--cutmix', '0', '--output_dir', output_dir]
    completed = run_main(argv, nproc=2, timeout=300)
    assert completed.returncode != 0
    assert 'Loss is not finite' in completed.stdout and 'at epoch 0, step' in completed.stdout
    assert 'error: non-finite loss at epoch 0' in completed.stdout  # main.py's exit message, no traceback
    assert not [name for name in os.listdir(output_dir) if name.endswith('.pth')]
