"""tools/export_onnx.py: deploy-form export of a tiny variant of each family, onnxruntime parity, dynamic batch.

Marked slow: each torch.onnx (dynamo) export of even a tiny model takes 4-10 s on this CPU."""
import os
import sys

import onnx
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import export_onnx  # noqa: E402

pytestmark = [pytest.mark.usefixtures('single_thread'), pytest.mark.slow]

TINY = {
    'unireplknet_a': {'depths': [1, 1, 1, 1], 'dims': [8, 16, 24, 32], 'kernel_sizes': [[3], [7], [13], [5]],
                      'layer_scale_init_value': 1.0},
    'RepLKNet-31B': {'layers': [1, 1, 1, 1], 'channels': [8, 16, 24, 32], 'large_kernel_sizes': [7, 9, 13, 5]},
}


def trained_looking_checkpoint(name, path):
    """A training-form checkpoint (main.py's {'model': ...} layout) whose BatchNorms have non-trivial statistics, so
    re-parameterisation has something to fold."""
    model = export_onnx.build_named_model(name, num_classes=5, **TINY[name])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch.save({'model': model.state_dict(), 'epoch': 3}, path)
    return model


def count_convs(model):
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


@pytest.mark.parametrize('name', list(TINY))
def test_deploy_form_export_matches_pytorch_on_random_and_real_images(name, tmp_path):
    checkpoint, out = tmp_path / 'checkpoint.pth', tmp_path / 'model.onnx'
    training_form = trained_looking_checkpoint(name, checkpoint)
    args = export_onnx.get_args_parser().parse_args([
        '--model', name, '--resume', str(checkpoint), '--num_classes', '5', '--model_overrides', repr(TINY[name]),
        '--out', str(out), '--input_size', '64', '--num_images', '2', '--batch_size', '2', '--timed_iters', '1',
        '--tolerance', '1e-5'])
    results = export_onnx.main(args)
    assert set(results['max_abs_diff']) == {'random', 'real'}
    assert all(difference < 1e-5 for difference in results['max_abs_diff'].values())
    assert all(speed > 0 for speed in results['img_per_s'].values())

    graph = onnx.load(out).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch (the parity batches were 3 and 2)
    # deploy form: one conv per re-parameterised kernel, fewer than the training form's parallel branches
    onnx_convs = sum(node.op_type == 'Conv' for node in graph.node)
    deployed = export_onnx.reparameterize_model(training_form.eval())
    assert onnx_convs == count_convs(deployed) < count_convs(training_form)
    session = export_onnx.onnx_session(str(out))
    images = torch.randn(1, 3, 64, 64)
    assert export_onnx.max_abs_difference(session, training_form, images)[0] < 1e-4  # vs. the training form too


def test_unireplknet_export_takes_batches_larger_than_the_cpu_paths_chunks(tmp_path):
    # 256 channels at 16x16 in stage 0: unireplknet_cpu's GRN norm works in chunks of 8 samples; batch 9 needs two
    model = export_onnx.build_named_model('unireplknet_a', num_classes=5, depths=[1, 0, 0, 0], dims=[256, 8, 8, 8],
                                          kernel_sizes=[[3], [], [], []], layer_scale_init_value=1.0)
    assert model.fast_cpu_kernels
    deployed = export_onnx.reparameterize_model(model)
    path = str(tmp_path / 'model.onnx')
    export_onnx.export_deployed(deployed, path, 64)
    session = export_onnx.onnx_session(path)
    difference, scale = export_onnx.max_abs_difference(session, deployed, torch.randn(9, 3, 64, 64))
    assert difference < 1e-4 * max(1, scale)


def test_parity_check_fails_when_outputs_differ(tmp_path):
    model = export_onnx.build_named_model('RepLKNet-31B', num_classes=5, **TINY['RepLKNet-31B'])
    deployed = export_onnx.reparameterize_model(model)
    path = str(tmp_path / 'model.onnx')
    export_onnx.export_deployed(deployed, path, 32)
    with torch.no_grad():
        deployed.head.bias.add_(0.01)
    with pytest.raises(AssertionError, match='differs from PyTorch'):
        export_onnx.check_parity(export_onnx.onnx_session(path), deployed, {'random': torch.randn(2, 3, 32, 32)}, 1e-4)
