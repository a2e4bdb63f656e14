"""Re-parameterise a trained segmentor: python segmentation/reparameterize.py CONFIG CHECKPOINT TARGET [--cfg-options ...]

See segmentation/README.md ("Re-parameterise for deployment").
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # the repository root (model files) and mmcv_custom

from mmcv_custom.reparameterize import main  # noqa: E402

if __name__ == '__main__':
    main()
