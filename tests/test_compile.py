"""--compile: torch.compile'd training, evaluation and --throughput equal eager; checkpoints, EMA and resume unchanged.

Inductor compiles C++ kernels on the CPU, minutes for a model with blocks on this 2-core machine: the inductor
test uses the block-less tiny UniRepLKNet (stem, downsampling convs, LayerNorms, head) and is marked slow; the fast
tests use the `eager` backend (Dynamo's graph capture without code generation) for the wiring."""
import copy
import os
import shutil

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

import engine
import main
from train_helpers import (BATCH_INDEPENDENT_UNIREPLKNET, assert_succeeded, load_checkpoint, make_tiny_dataset,
                           max_abs_difference, run_main, tiny_data_args)

pytestmark = pytest.mark.usefixtures('single_thread')
ONE_BLOCK_UNIREPLKNET = '{"depths": [1, 0, 0, 0], "dims": [8, 16, 24, 32], "kernel_sizes": [[7], [], [], []]}'


def blockless_model():
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides',
                                             BATCH_INDEPENDENT_UNIREPLKNET, '--nb_classes', '3']))


def one_training_step(model, model_ema, images, targets):
    engine.train_one_epoch(model, torch.nn.CrossEntropyLoss(), [(images, targets)],
                           torch.optim.AdamW(model.parameters(), lr=0.01), engine.Precision('cpu', False),
                           torch.device('cpu'), 0, steps_per_epoch=1, lr_schedule=np.full(1, 0.01),
                           model_ema=model_ema)


def compiled_and_eager_step(backend):
    torch.manual_seed(0)
    images, targets = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    eager = blockless_model()
    compiled_source = copy.deepcopy(eager)
    eager_ema, compiled_ema = ModelEmaV3(eager, decay=0.5), ModelEmaV3(compiled_source, decay=0.5)
    one_training_step(eager, eager_ema, images, targets)
    one_training_step(torch.compile(compiled_source, backend=backend), compiled_ema, images, targets)
    return eager, compiled_source, eager_ema, compiled_ema


def test_compiled_training_step_equals_eager_and_updates_the_ema():
    eager, compiled_source, eager_ema, compiled_ema = compiled_and_eager_step('eager')
    assert max_abs_difference(compiled_source.state_dict(), eager.state_dict()) == 0
    assert max_abs_difference(compiled_ema.module.state_dict(), eager_ema.module.state_dict()) == 0
    assert max_abs_difference(compiled_ema.module.state_dict(), blockless_model().state_dict()) > 0  # it moved


def test_compiled_run_saves_the_eager_model_keys(tmp_path):
    """main.py checkpoints the model under --compile, not the torch.compile wrapper (whose keys carry `_orig_mod.`):
    the saved keys are an eager model's, so the files load without --compile and into the release's code."""
    data = make_tiny_dataset(str(tmp_path / 'data'))
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET,
                            *tiny_data_args(*data), '--batch_size', '16', '--epochs', '1', '--warmup_steps', '1',
                            '--model_ema', 'true', '--compile', 'eager', '--output_dir', str(tmp_path / 'run')])
    main.main(args)
    checkpoint = load_checkpoint(str(tmp_path / 'run' / 'checkpoint-0.pth'))
    assert list(checkpoint['model']) == list(checkpoint['model_ema']) == list(blockless_model().state_dict())


def test_compile_option_values_and_throughput(tmp_path):
    parse = main.parse_args
    assert parse([]).compile == ''
    assert parse(['--compile']).compile == parse(['--compile', 'true']).compile == 'inductor'
    assert parse(['--compile', 'false']).compile == ''
    assert parse(['--compile', 'aot_eager']).compile == 'aot_eager'
    config = tmp_path / 'compile.yaml'
    config.write_text('compile: true\n')
    assert parse(['--config', str(config)]).compile == 'inductor'  # YAML's boolean, as the flag
    with pytest.raises(ValueError, match='not a torch.compile backend'):
        main.check_options(parse(['--compile', 'inductorr', '--device', 'cpu']), torch.device('cpu'))
    args = parse(['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET, '--nb_classes',
                  '3', '--throughput', '--compile', 'eager', '--batch_size', '2', '--input_size', '16',
                  '--device', 'cpu', '--reparam'])
    assert main.measure_throughput(args, torch.device('cpu')) > 0


@pytest.mark.slow
def test_inductor_training_step_and_eval_batch_equal_eager():
    eager, compiled_source, eager_ema, compiled_ema = compiled_and_eager_step('inductor')
    assert max_abs_difference(compiled_source.state_dict(), eager.state_dict()) < 1e-5
    assert max_abs_difference(compiled_ema.module.state_dict(), eager_ema.module.state_dict()) < 1e-5
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = eager.eval()(images)
        actual = main.inference_model(eager, reparam=True, compile_with='inductor')(images)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_eager_checkpoint_resumes_into_a_compiled_run(tmp_path):
    """Epoch 0 eager, epoch 1 compiled (aot_eager: AOTAutograd's traced forward and backward, same kernels) with
    activation checkpointing and EMA: the final weights equal a fully eager run's, under the same keys. One Dilated
    Reparam Block (K=7, BatchNorms) keeps compilation short."""
    data = make_tiny_dataset(str(tmp_path / 'data'))
    argv = ['--model', 'unireplknet_a', '--model_overrides', ONE_BLOCK_UNIREPLKNET, *tiny_data_args(*data),
            '--batch_size', '8', '--epochs', '2', '--warmup_steps', '1', '--mixup', '0', '--cutmix', '0',
            '--model_ema', 'true', '--use_checkpoint', 'true']
    eager, mixed = str(tmp_path / 'eager'), str(tmp_path / 'mixed')
    assert_succeeded(run_main([*argv, '--output_dir', eager]))
    os.makedirs(mixed)
    shutil.copy(os.path.join(eager, 'checkpoint-0.pth'), mixed)
    completed = run_main([*argv, '--output_dir', mixed, '--compile', 'aot_eager'])
    assert_succeeded(completed)
    assert 'Continuing after epoch 0' in completed.stdout
    assert 'Training with torch.compile (backend aot_eager' in completed.stdout
    expected, actual = (load_checkpoint(os.path.join(folder, 'checkpoint-1.pth')) for folder in (eager, mixed))
    assert list(actual['model']) == list(expected['model'])
    assert max_abs_difference(actual['model'], expected['model']) < 1e-5
    assert max_abs_difference(actual['model_ema'], expected['model_ema']) < 1e-5


@pytest.mark.slow
def test_compiled_ddp_run_with_accumulation_equals_eager(tmp_path):
    """Two gloo processes, --update_freq 2 (DDP's no_sync through the compile wrapper), backend eager (Dynamo's graph
    capture; inductor would compile for minutes per process): the same weights and EMA as the eager DDP run."""
    data = make_tiny_dataset(str(tmp_path / 'data'))
    argv = ['--model', 'unireplknet_a', '--model_overrides', BATCH_INDEPENDENT_UNIREPLKNET, *tiny_data_args(*data),
            '--batch_size', '4', '--update_freq', '2', '--epochs', '1', '--warmup_steps', '1', '--mixup', '0',
            '--cutmix', '0', '--model_ema', 'true']
    eager, compiled = str(tmp_path / 'eager'), str(tmp_path / 'compiled')
    assert_succeeded(run_main([*argv, '--output_dir', eager], nproc=2))
    completed = run_main([*argv, '--output_dir', compiled, '--compile', 'eager'], nproc=2)
    assert_succeeded(completed)
    assert 'Training with torch.compile (backend eager' in completed.stdout
    expected, actual = (load_checkpoint(os.path.join(folder, 'checkpoint-0.pth')) for folder in (eager, compiled))
    assert max_abs_difference(actual['model'], expected['model']) < 1e-6
    assert max_abs_difference(actual['model_ema'], expected['model_ema']) < 1e-6


@pytest.mark.parametrize('model, overrides', [
    ('unireplknet_a', ONE_BLOCK_UNIREPLKNET),
    ('replknet_31b', '{"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32], "large_kernel_sizes": [7, 7, 7, 7], '
                     '"small_kernel": 3}')])
def test_checkpointed_blocks_run_eagerly_inside_a_compiled_model_without_hiding_compile_errors(model, overrides):
    """torch.compiler.disable on the checkpointed blocks (Dynamo cannot trace checkpoint with a context_fn), not a
    process-wide suppress_errors: the compiled model with activation checkpointing trains as the eager one."""
    args = main.parse_args(['--model', model, '--model_overrides', overrides, '--nb_classes', '3',
                            '--use_checkpoint', 'true', '--compile', 'eager', '--device', 'cpu'])
    main.check_options(args, torch.device('cpu'))
    assert not torch._dynamo.config.suppress_errors
    torch.manual_seed(0)
    eager = main.build_model(args)
    compiled_source = copy.deepcopy(eager)
    images = torch.randn(2, 3, 32, 32)
    eager(images).square().sum().backward()
    main.compiled(compiled_source, 'eager')(images).square().sum().backward()
    for (name, expected), actual in zip(eager.named_parameters(), compiled_source.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=0, atol=0, msg=name)
