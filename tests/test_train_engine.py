"""In-process tests of engine.py: clipping in every precision, stop requests, evaluation counts, and one optimizer
update (TrainStep) alone: accumulation, the non-finite guard, host reads per step, metrics read per print interval."""
import copy

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

import engine
import main
import metric_logging
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


# ---------------------------------------------------------------- one optimizer update (engine.TrainStep) alone

def batch_independent_model(dtype=torch.float32):
    """No blocks (no BatchNorm): each sample's loss depends on that sample only, so accumulation is exact."""
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides',
                                             BATCH_INDEPENDENT_UNIREPLKNET, '--nb_classes', '3'])).to(dtype)


def train_step(model, optimizer, **kwargs):
    return engine.TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, engine.Precision('cpu', False),
                            torch.device('cpu'), **kwargs)


def test_step_with_accumulation_equals_one_step_on_the_combined_batch():
    """float64, so the only difference is the order of the sums: 2 micro-batches of 4 == one batch of 8."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (8,), generator=generator)
    whole = batch_independent_model(torch.float64)
    accumulated = copy.deepcopy(whole)
    for model, update_freq in ((whole, 1), (accumulated, 2)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        batches = list(zip(images.chunk(update_freq), targets.chunk(update_freq)))
        result = train_step(model, optimizer, update_freq=update_freq)(batches, iteration=0)
        assert len(result.micro_batch_metrics) == update_freq and not result.loss_was_nonfinite
    for expected, actual in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='expected --update_freq 2'):  # a loader that ends inside an update
        train_step(accumulated, torch.optim.SGD(accumulated.parameters(), lr=1.0), update_freq=2)(
            [(images, targets)], iteration=0)


def test_non_finite_loss_skips_the_optimizer_step_and_the_ema():
    model = batch_independent_model()
    model_ema = ModelEmaV3(model, decay=0.5)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    images = torch.randn(4, 3, 32, 32)
    images[0] = float('nan')
    result = train_step(model, optimizer, model_ema=model_ema)([(images, torch.zeros(4, dtype=torch.long))], 0)
    assert result.loss_was_nonfinite and result.grad_norm is None
    assert not optimizer.state  # AdamW never stepped
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) and torch.equal(model_ema.module.state_dict()[name], before[name])


def count_host_reads(monkeypatch):
    """Count the Tensor methods that copy a value to the host (on CUDA each waits for the device)."""
    reads = []
    for name in ('item', 'tolist', '__bool__', '__float__', '__int__'):
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_a_step_reads_the_device_once_and_the_epoch_once_more_per_print(monkeypatch):
    """The agreement before the optimizer step is a step's only host read; the metrics of a print interval are
    read together (6 updates, a line every 3: lines at updates 0, 3 and 5)."""
    model = tiny_model()
    # SGD: AdamW reads its step counter with .item(), a CPU tensor also when training on CUDA (no device wait).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = [(images, targets) for images, targets in random_loader(12)]
    step = train_step(model, optimizer, update_freq=2, model_ema=ModelEmaV3(model, decay=0.5), clip_grad=1.0)
    reads = count_host_reads(monkeypatch)
    step(batches[:2], iteration=0)
    assert reads == ['item']  # one process; across ranks it is the .tolist() of the all-reduced flags
    reads.clear()
    stats = train(model, batches, optimizer, engine.Precision('cpu', False), update_freq=2, print_freq=3)
    assert reads == ['item', 'tolist'] + ['item'] * 3 + ['tolist'] + ['item'] * 2 + ['tolist']
    monkeypatch.undo()
    assert set(stats) >= {'loss', 'class_acc', 'grad_norm', 'lr'}


def test_metrics_read_per_print_interval_equal_the_values_of_each_step():
    logger, logged = metric_logging.MetricLogger(), []

    class Writer:
        def set_step(self, step):
            logged.append(('step', step))

        def update(self, head, **values):
            logged.append((head, values))

    device_metrics = engine.DeviceMetrics(logger, Writer())
    for step, loss in enumerate([0.5, 0.25]):
        device_metrics.add(step, dict(loss=torch.tensor(loss), class_acc=None, lr=0.1, min_lr=0.01,
                                      weight_decay=None, grad_norm=torch.tensor(2.0 * loss), mesa_loss=None))
    assert not logger.meters and not logged  # nothing is read before the flush
    device_metrics.flush()
    assert logger.meters['loss'].global_avg == 0.375 and logger.meters['grad_norm'].value == 0.5
    assert logged[:3] == [('step', 0), ('loss', dict(loss=0.5, class_acc=None)),
                          ('opt', dict(lr=0.1, min_lr=0.01, weight_decay=None, grad_norm=1.0))]
    assert logged[3] == ('step', 1) and not device_metrics.pending


# ---------------------------------------------------------------- main.py's numerics and speed options

def test_tf32_is_on_by_default_on_cuda_can_be_turned_off_and_is_logged(capsys):
    """The release's numerics (torch <= 1.11 used TF32 for float32 matmuls by default); nothing changes on the CPU.
    The switches are process-wide, so they are set as the test found them afterwards."""
    assert main.parse_args([]).tf32 and not main.parse_args(['--tf32', 'false']).tf32
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        main.configure_tf32(True, torch.device('cpu'))
        assert torch.get_float32_matmul_precision() == matmul and not capsys.readouterr().out
        main.configure_tf32(False, torch.device('cuda', 0))
        assert torch.get_float32_matmul_precision() == 'highest' and not torch.backends.cudnn.allow_tf32
        assert 'TF32 off (--tf32 false)' in capsys.readouterr().out
        main.configure_tf32(True, torch.device('cuda', 0))
        assert torch.get_float32_matmul_precision() == 'high' and torch.backends.cudnn.allow_tf32
        assert 'TF32 on for float32 matmuls and cuDNN convolutions' in capsys.readouterr().out
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def test_throughput_runs_in_inference_mode_outside_the_checkpoint_path(monkeypatch):
    modes = []

    def no_checkpoint(*args, **kwargs):
        raise AssertionError('--throughput took the activation-checkpoint path')
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', no_checkpoint)
    build_model = main.build_model

    def recording_model(args):
        model = build_model(args)
        model.register_forward_hook(lambda module, inputs, output: modes.append(torch.is_inference_mode_enabled()))
        return model
    monkeypatch.setattr(main, 'build_model', recording_model)
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--nb_classes', '3',
                            '--throughput', '--use_checkpoint', 'true', '--batch_size', '2', '--input_size', '32',
                            '--device', 'cpu'])
    assert main.measure_throughput(args, torch.device('cpu')) > 0
    assert modes and all(modes)


def test_ema_kept_on_the_cpu_with_distributed_evaluation_on_gpus_is_refused_at_start():
    """NCCL cannot sum the counts of an EMA evaluated on the CPU; without --dist_eval it is evaluated there."""
    args = main.parse_args(['--model_ema', 'true', '--model_ema_force_cpu', 'true', '--model_ema_eval', 'true',
                            '--dist_eval', 'true'])
    args.distributed = True
    with pytest.raises(ValueError, match='pass --dist_eval false'):
        main.check_options(args, torch.device('cuda', 0))
    args.dist_eval = False
    main.check_options(args, torch.device('cuda', 0))
