"""In-process tests of engine.py: clipping in every precision, stop requests, evaluation counts."""
import copy

import numpy as np
import pytest
import torch

import engine
import main
import utils
from train_helpers import BATCH_INDEPENDENT_UNIREPLKNET, TINY_UNIREPLKNET

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py


def tiny_model():
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET,
                                             '--nb_classes', '3']))


def random_loader(num_batches, batch_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # 32 px, not 16: at 16 px the last downsampling conv sees a 1x1 map, and oneDNN's bfloat16 backward of a
    # stride-2 conv on a 1x1 input returns uninitialised (sometimes non-finite) gradients on CPU (torch 2.14).
    images = torch.randn(num_batches * batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 3, (num_batches * batch_size,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=batch_size)


def train(model, loader, optimizer, precision, **kwargs):
    steps = len(loader) // kwargs.get('update_freq', 1)
    return engine.train_one_epoch(model, torch.nn.CrossEntropyLoss(), loader, optimizer, precision,
                                  torch.device('cpu'), epoch=0, steps_per_epoch=steps,
                                  lr_schedule=np.full(steps, 1.0), **kwargs)


@pytest.mark.parametrize('use_amp', [False, True], ids=['float32', 'bfloat16'])
def test_gradient_clipping_applies_in_every_precision(use_amp):
    model = tiny_model().to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # one step moves the weights by the gradient
    precision = engine.Precision('cpu', use_amp=use_amp, amp_dtype='bfloat16')
    stats = train(model, random_loader(1), optimizer, precision, clip_grad=1e-3, channels_last=True)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert stats['grad_norm'] > 1e-2  # the unclipped norm is logged...
    assert step.item() == pytest.approx(1e-3, rel=1e-3)  # ...and the applied gradient is clipped


def test_float16_amp_on_cpu_is_refused_with_the_alternative():
    with pytest.raises(ValueError, match='--amp_dtype bfloat16'):
        engine.Precision('cpu', use_amp=True, amp_dtype='float16')


def test_stop_request_checkpoints_the_current_step_then_raises():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    saved = []
    utils.request_stop()
    try:
        with pytest.raises(utils.TrainingInterrupted):
            train(model, random_loader(4), optimizer, engine.Precision('cpu', False), update_freq=2,
                  save_step_checkpoint=lambda epoch, step: saved.append((epoch, step)))
    finally:
        utils.clear_stop_request()
    assert saved == [(0, 1)]  # after the first full update (2 micro-batches), not before it


def test_periodic_step_checkpoints():
    model = tiny_model()
    saved = []
    train(model, random_loader(6), torch.optim.AdamW(model.parameters()), engine.Precision('cpu', False),
          save_every_steps=2, save_step_checkpoint=lambda epoch, step: saved.append(step))
    assert saved == [2, 4, 6]


def test_evaluation_counts_every_image_once():
    model = tiny_model()
    loader = random_loader(3, batch_size=5)
    stats = engine.evaluate(loader, model, torch.device('cpu'), engine.Precision('cpu', False))
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images) for images, _ in loader])
    targets = torch.cat([targets for _, targets in loader])
    assert stats['num_images'] == 15
    assert stats['acc1'] == pytest.approx(100.0 * (logits.argmax(1) == targets).float().mean().item())
    assert stats['acc5'] == 100.0  # 3 classes: the top-5 is capped at the class count
    assert stats['loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


def batch_independent_model():
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides',
                                             BATCH_INDEPENDENT_UNIREPLKNET, '--nb_classes', '3']))


def test_update_freq_applies_the_mean_gradient_of_the_combined_batch():
    """2 micro-batches of 4 with update_freq 2 make the update of one batch of the same 8 samples: each micro-batch's
    loss is divided by update_freq. Plain SGD (the update is -lr x gradient), because AdamW's update would not change
    with a scaled gradient; the logged gradient norms must agree too."""
    accumulated = batch_independent_model()
    combined = copy.deepcopy(accumulated)
    accumulated_stats = train(accumulated, random_loader(2, batch_size=4), torch.optim.SGD(accumulated.parameters()),
                              engine.Precision('cpu', False), update_freq=2)
    combined_stats = train(combined, random_loader(1, batch_size=8), torch.optim.SGD(combined.parameters()),
                           engine.Precision('cpu', False))
    assert accumulated_stats['grad_norm'] == pytest.approx(combined_stats['grad_norm'], rel=1e-5)
    for (name, parameter), expected in zip(accumulated.named_parameters(), combined.parameters()):
        torch.testing.assert_close(parameter, expected, msg=name)
