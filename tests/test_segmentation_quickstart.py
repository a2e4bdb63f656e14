"""The segmentation quickstart (segmentation/README.md): real photos with real objects pasted at known places
(segmentation/make_pasted_objects.py), UPerNet over a tiny UniRepLKNet (segmentation/smp_upernet.py)."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'segmentation'))

import make_pasted_objects  # noqa: E402
import smp_upernet  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')

# The README's command (after the data-set line).
QUICKSTART = ['--num_classes', '3', '--size', '64', '64', '--model', 'unireplknet_a', '--model_kwargs',
              "{'depths': (1, 1, 1, 1), 'dims': (16, 32, 64, 128), 'kernel_sizes': ((3,), (7,), (7,), (3,))}",
              '--iters', '300', '--warmup_iters', '20', '--batch_size', '8', '--lr', '2e-3', '--workers', '0']


def test_masks_are_the_pasted_pixels(tmp_path):
    """Each example's label map holds background and 1-2 objects; where a coin label is, the image shows the coin
    (grey), not the background; a fixed seed writes the same data set."""
    rng = np.random.default_rng(0)
    backgrounds = [make_pasted_objects.rgb('coffee')]   # orange and red: the grey coin stands out
    sprites = make_pasted_objects.object_sprites()
    for _ in range(10):
        image, labels = make_pasted_objects.make_example(rng, backgrounds, sprites)
        pixels, labels = np.asarray(image, dtype=np.float64), np.asarray(labels)
        assert set(np.unique(labels)) - {0} and set(np.unique(labels)) <= {0, 1, 2}
        if (labels == 2).sum() > 20:
            coin, coffee = pixels[labels == 2], pixels[labels == 0]
            assert np.abs(coin[:, 0] - coin[:, 1]).mean() < np.abs(coffee[:, 0] - coffee[:, 1]).mean() / 2
    first = make_pasted_objects.write_data_set(str(tmp_path / 'a'))
    second = make_pasted_objects.write_data_set(str(tmp_path / 'b'))
    for folder in ('annotations/validation', 'images/validation'):
        for name in os.listdir(os.path.join(first, folder)):
            assert np.array_equal(np.asarray(Image.open(os.path.join(first, folder, name))),
                                  np.asarray(Image.open(os.path.join(second, folder, name))))


@pytest.mark.slow
def test_quickstart_ends_well_above_the_majority_class_baseline(tmp_path):
    data = make_pasted_objects.write_data_set(str(tmp_path / 'pasted'))
    result = smp_upernet.main(['--data', data, *QUICKSTART, '--output', str(tmp_path / 'upernet.pth')])
    assert result['mIoU'] >= 0.6 and result['mIoU'] >= 2 * result['majority_mIoU'], result['mIoU']
