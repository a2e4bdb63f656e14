"""Re-parameterise a trained detector: python detection/reparameterize.py CONFIG CHECKPOINT TARGET [--cfg-options ...]

See detection/README.md ("Re-parameterise for deployment").
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'segmentation')]  # model files; mmcv_custom is shared with segmentation/

from mmcv_custom.reparameterize import main  # noqa: E402

if __name__ == '__main__':
    main()
