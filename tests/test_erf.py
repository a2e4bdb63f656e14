"""tools/erf.py: the aggregated contribution score matrix of RepLKNet's Appendix B and the area ratios of Table 10."""
import os
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import erf  # noqa: E402
from named_model import build_named_model  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')


class ToyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                                    nn.Tanh(), nn.Conv2d(5, 3, 5, stride=2, padding=2))

    def forward_features(self, x):
        return self.layers(x)


def direct_loop_scores(model, images):
    """Appendix B term by term: the gradient of every central point M[i, j, h'/2, w'/2] separately."""
    total = torch.zeros(images[0].shape[1:], dtype=torch.float64)
    for image in images:
        image = image.unsqueeze(0).clone().requires_grad_(True)
        features = model.forward_features(image)
        centre_y, centre_x = features.shape[2] // 2, features.shape[3] // 2
        gradient = torch.zeros_like(image)
        for channel in range(features.shape[1]):
            gradient += torch.autograd.grad(features[0, channel, centre_y, centre_x], image, retain_graph=True)[0]
        for input_channel in range(3):
            total += gradient[0, input_channel].clamp(min=0)
    scores = torch.log10(total + 1)
    return (scores / scores.max()).numpy()


def test_matrix_follows_the_formula_on_a_toy_conv_net():
    model = ToyConvNet().double().eval()
    images = [torch.randn(3, 14, 18, dtype=torch.float64) for _ in range(3)]
    scores = erf.aggregated_contribution_scores(model, images, progress=False)
    expected = direct_loop_scores(model, images)
    assert scores.shape == (14, 18)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-14)
    assert scores.max() == 1.0 and scores.min() >= 0
    # a 3-layer net (kernels 3, 3, 5; strides 1, 2, 2) sees a bounded window: pixels far from the centre score 0
    assert scores[0, 0] == 0 and scores[7, 9] > 0


class ChannelsLastToyConvNet(ToyConvNet):
    output_fmt = 'NHWC'  # as timm's Swin declares

    def forward_features(self, x):
        return super().forward_features(x).permute(0, 2, 3, 1)


def test_channels_last_feature_maps_are_read_as_such():
    model = ToyConvNet().double().eval()
    channels_last = ChannelsLastToyConvNet().double().eval()
    channels_last.load_state_dict(model.state_dict())
    images = [torch.randn(3, 12, 12, dtype=torch.float64)]
    np.testing.assert_array_equal(erf.aggregated_contribution_scores(channels_last, images, progress=False),
                                  erf.aggregated_contribution_scores(model, images, progress=False))


def test_area_ratio_of_known_matrices():
    point = np.zeros((11, 11))
    point[5, 5] = 1
    assert erf.high_contribution_area_ratio(point, 0.99) == pytest.approx(1 / 121)
    uniform = np.ones((10, 10))
    # centred odd squares: 1, 3, 5, 7, 9 (81 %), then clipped 11 -> the whole image
    assert erf.high_contribution_area_ratio(uniform, 0.49) == pytest.approx(0.49)
    assert erf.high_contribution_area_ratio(uniform, 0.5) == pytest.approx(0.81)
    assert erf.high_contribution_area_ratio(uniform, 0.99) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='threshold'):
        erf.high_contribution_area_ratio(uniform, 20)


def tiny_unireplknet(kernel_size):
    # layer scale 1 (not 1e-6): at random init the blocks must contribute, or every variant has the stem's ERF
    return build_named_model('unireplknet_a', num_classes=10, depths=[1, 1, 2, 1], dims=[8, 8, 8, 8],
                             kernel_sizes=[[kernel_size]] * 2 + [[kernel_size] * 2] + [[kernel_size]],
                             layer_scale_init_value=1.0)


def test_large_kernels_have_a_larger_effective_receptive_field_than_3x3():
    torch.manual_seed(0)
    images = [torch.randn(3, 224, 224) for _ in range(2)]  # the 3x3 model's theoretical RF is 215 px
    ratios = {}
    for kernel_size in (3, 13):
        torch.manual_seed(1)
        scores = erf.aggregated_contribution_scores(tiny_unireplknet(kernel_size), images, progress=False)
        ratios[kernel_size] = erf.high_contribution_area_ratio(scores, 0.99)
    assert ratios[13] > ratios[3] + 0.3, ratios


def test_table_format_and_outputs(tmp_path):
    out = tmp_path / 'erf'
    args = erf.get_args_parser().parse_args([
        '--model', 'unireplknet_a', '--model', 'resnet18', '--images', 'skimage', '--num_images', '2',
        '--input_size', '64', '--out', str(out), '--device', 'cpu',
        '--model_overrides', '{"num_classes": 10}'])
    scores = erf.main(args)
    assert list(scores) == ['unireplknet_a', 'resnet18']
    for name in scores:
        saved = np.load(out / f'erf_{name}.npy')
        assert saved.shape == (64, 64) and saved.max() == 1.0
        assert (out / f'erf_{name}.png').stat().st_size > 0
    assert (out / 'erf.png').stat().st_size > 0
    table = (out / 'erf_area_ratio.md').read_text().splitlines()
    assert table[2] == '| model | t = 20% | t = 30% | t = 50% | t = 99% |'
    assert table[3] == '|---|---:|---:|---:|---:|'
    rows = table[4:]
    assert [row.split('|')[1].strip() for row in rows] == ['unireplknet_a', 'resnet18']
    for row in rows:
        values = [float(re.fullmatch(r' (\d+\.\d)% ', cell).group(1)) for cell in row.split('|')[2:-1]]
        assert len(values) == 4 and values == sorted(values) and 0 < values[0] and values[-1] <= 100


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match='unknown --model'):
        build_named_model('no_such_model')
    parser = erf.get_args_parser()
    args = parser.parse_args(['--model', 'resnet18', '--model', 'resnet18', '--resume', 'none', '--out', str(tmp_path)])
    with pytest.raises(SystemExit, match='one --resume per --model'):
        erf.main(args)
    args = parser.parse_args(['--model', 'resnet18', '--images', str(tmp_path / 'missing'), '--out', str(tmp_path)])
    with pytest.raises(FileNotFoundError, match='no such folder'):
        erf.main(args)
