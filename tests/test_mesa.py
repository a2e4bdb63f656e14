"""MESA (--mesa, --mesa_start_ratio): the EMA teacher's term, when it starts, no gradient to the teacher, resume."""
import copy
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

import engine
import main
from mesa import Mesa, mesa_distillation_loss
from tasks import ForecastingTask
from train_helpers import (TINY_UNIREPLKNET, assert_bitwise_equal, assert_succeeded, load_checkpoint,
                           make_tiny_dataset, read_log, run_main, tiny_data_args)

pytestmark = pytest.mark.usefixtures('single_thread')


def tiny_model():
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET,
                                             '--nb_classes', '3']))


def random_batches(num_batches, batch_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 16, 16, generator=generator),
             torch.randint(0, 3, (batch_size,), generator=generator)) for _ in range(num_batches)]


def train_epoch(model, batches, optimizer, model_ema, mesa, epoch, steps_per_epoch, update_freq=1):
    return engine.train_one_epoch(
        model, torch.nn.CrossEntropyLoss(), batches, optimizer, engine.Precision('cpu', False), torch.device('cpu'),
        epoch, steps_per_epoch=steps_per_epoch, lr_schedule=np.full(2 * steps_per_epoch, 0.1),
        update_freq=update_freq, model_ema=model_ema, mesa=mesa)


def test_distillation_loss_is_fastervits_formula():
    student, teacher = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    p, q = torch.softmax(student / 3, dim=1), torch.softmax(teacher / 3, dim=1)
    expected = 50 * (q * (q.log() - p.log())).sum() / 5
    assert mesa_distillation_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-12)
    assert mesa_distillation_loss(teacher, teacher).item() == pytest.approx(0, abs=1e-12)


def test_term_starts_at_the_given_fraction_of_all_updates():
    model = tiny_model()
    model_ema = ModelEmaV3(model, decay=0.5)
    teacher_batches = []
    model_ema.module.register_forward_hook(lambda module, inputs, output: teacher_batches.append(len(inputs[0])))
    mesa = Mesa(weight=0.5, start_ratio=0.25, total_updates=2 * 4)  # 2 epochs x 4 updates: starts at update 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    stats = []
    for epoch in range(2):  # 2 micro-batches per update: the term applies to each micro-batch of an active update
        stats.append(train_epoch(model, random_batches(8, seed=epoch), optimizer, model_ema, mesa, epoch,
                                 steps_per_epoch=4, update_freq=2))
        teacher_batches.append('end of epoch')
    assert teacher_batches == [4] * 4 + ['end of epoch'] + [4] * 8 + ['end of epoch']
    assert stats[0]['mesa_loss'] > 0 and stats[1]['mesa_loss'] > 0
    late = Mesa(weight=0.5, start_ratio=1.0, total_updates=4)  # never within training: no term, no meter
    assert 'mesa_loss' not in train_epoch(model, random_batches(4), optimizer, model_ema, late, 0, steps_per_epoch=4)


def test_update_equals_the_formula_and_the_teacher_gets_no_gradient():
    model = tiny_model()
    model_ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():  # a teacher that differs from the student
        for parameter in model_ema.module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    teacher_before = copy.deepcopy(model_ema.module.state_dict())
    reference = copy.deepcopy(model)
    (images, targets), = random_batches(1)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mesa = Mesa(weight=0.7, start_ratio=0.0, total_updates=1)
    stats = train_epoch(model, [(images, targets)], optimizer, model_ema, mesa, 0, steps_per_epoch=1)

    reference.train()
    output = reference(images)
    teacher = copy.deepcopy(model_ema.module)
    teacher.load_state_dict(teacher_before)
    with torch.no_grad():
        teacher_output = teacher(images)
    term = 0.7 * 50 * F.kl_div(F.log_softmax(output / 3, dim=1), F.softmax(teacher_output / 3, dim=1),
                               reduction='batchmean')
    loss = F.cross_entropy(output, targets) + term
    loss.backward()
    assert stats['loss'] == pytest.approx(loss.item(), rel=1e-5)
    assert stats['mesa_loss'] == pytest.approx(term.item(), rel=1e-5)
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter.detach(), expected.detach() - 0.1 * expected.grad, rtol=1e-5,
                                   atol=1e-6, msg=name)
    assert all(parameter.grad is None for parameter in model_ema.module.parameters())
    # the teacher moved only by the EMA update: ema = 0.5 * teacher_before + 0.5 * updated student
    for (name, value), student in zip(model_ema.module.state_dict().items(), model.state_dict().values()):
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * teacher_before[name] + 0.5 * student, msg=name)


def test_mesa_needs_the_ema_and_a_sensible_start():
    args = main.parse_args(['--mesa', '0.5', '--device', 'cpu'])
    with pytest.raises(ValueError, match='--model_ema true'):
        main.check_options(args, torch.device('cpu'))
    forecasting = main.parse_args(['--mesa', '0.5', '--model_ema', 'true', '--data_set', 'GLOBAL_TEMP'])
    with pytest.raises(ValueError, match='not a classification task'):
        main.build_mesa(forecasting, ForecastingTask(baselines=lambda samples: {}), total_updates=10)
    with pytest.raises(ValueError, match='mesa_start_ratio'):
        Mesa(weight=0.5, start_ratio=1.5, total_updates=10)
    with pytest.raises(ValueError, match='--mesa must be >= 0'):
        Mesa(weight=-1, start_ratio=0.25, total_updates=10)


@pytest.mark.slow
def test_run_resumed_across_the_mesa_start_is_bitwise_equal(tmp_path):
    """main.py with --mesa: 2 epochs x 6 updates, MESA from update 9 (epoch 1, step 3); a second run resumes from the
    first one's epoch-0 checkpoint (MESA not started yet) and must end with the same weights, EMA and logged losses.
    (Step-level resume is the same for every loss term: tests/test_train_runs.py kills and resumes mid-epoch.)"""
    data = make_tiny_dataset(str(tmp_path / 'data'))
    argv = ['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, *tiny_data_args(*data),
            '--batch_size', '4', '--update_freq', '2', '--epochs', '2', '--warmup_steps', '2', '--mixup', '0.3',
            '--cutmix', '0', '--model_ema', 'true', '--model_ema_decay', '0.5', '--mesa', '1.0',
            '--mesa_start_ratio', '0.75']
    full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
    assert_succeeded(run_main([*argv, '--output_dir', full]))
    os.makedirs(resumed)
    shutil.copy(os.path.join(full, 'checkpoint-0.pth'), resumed)
    completed = run_main([*argv, '--output_dir', resumed])
    assert_succeeded(completed)
    assert 'Continuing after epoch 0' in completed.stdout
    expected, actual = (load_checkpoint(os.path.join(folder, 'checkpoint-1.pth')) for folder in (full, resumed))
    assert_bitwise_equal(actual['model'], expected['model'])
    assert_bitwise_equal(actual['model_ema'], expected['model_ema'])
    full_log, resumed_log = read_log(full), read_log(resumed)
    assert 'train_mesa_loss' not in full_log[0] and full_log[1]['train_mesa_loss'] > 0
    assert [line['epoch'] for line in resumed_log] == [1]
    assert resumed_log[0]['train_mesa_loss'] == full_log[1]['train_mesa_loss']
    assert resumed_log[0]['train_loss'] == full_log[1]['train_loss']
