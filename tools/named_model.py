"""Model building and input images shared by the analysis and deployment tools (tools/erf.py, tools/export_onnx.py).

A tool names a model the way main.py does (`unireplknet_s`, `replknet_31b`, `RepLKNet-31B`) or by any timm name
(`resnet101`), optionally with extra constructor kwargs and weights from a checkpoint that main.py wrote, a released
file or a bare state_dict. Weights load through checkpoint.load_weights_for_tool: the trained weights, the EMA only
with --use_ema, printed either way.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python tools/<tool>.py`: make the repository's modules importable
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import timm  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from torchvision import transforms  # noqa: E402

import replknet  # noqa: E402  (registers replknet_* with timm; REPLKNET_ALIASES)
import unireplknet  # noqa: E402,F401  (registers unireplknet_* with timm)
from checkpoint import load_checkpoint_file, load_weights_for_tool  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
BUILTIN_IMAGES = 'skimage'
# Real photographs that ship inside scikit-image (no download); grey ones are repeated over three channels.
SKIMAGE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
                  'retina', 'camera', 'moon', 'coins', 'brick', 'grass', 'gravel')


def parse_model_kwargs(text):
    """--model_overrides: a YAML/JSON dict of constructor kwargs (e.g. tiny dims for a quick run)."""
    if not text:
        return {}
    kwargs = yaml.safe_load(text)
    if not isinstance(kwargs, dict):
        raise ValueError(f'--model_overrides must be a YAML/JSON dict, got {text!r}')
    return kwargs


def resolve_model_name(name):
    """The timm name of --model (RepLKNet-31B -> replknet_31b); an error for names neither project nor timm has."""
    name = replknet.REPLKNET_ALIASES.get(name, name)
    if not timm.is_model(name):
        raise ValueError(f'unknown --model {name!r}: neither a model of this project (unireplknet_a..xl, '
                         'replknet_31b/31l/xl, RepLKNet-31B/31L/XL) nor a timm architecture (timm.list_models())')
    return name


def build_named_model(name, resume='', use_ema=False, **kwargs):
    """An eval-mode model: this project's (aliases included) or any timm architecture, with --resume weights (the
    trained ones, or the EMA with use_ema)."""
    model = timm.create_model(resolve_model_name(name), pretrained=False, **kwargs)
    if resume:
        if not os.path.isfile(resume):
            raise FileNotFoundError(f'--resume {resume}: no such file')
        load_weights_for_tool(model, load_checkpoint_file(resume), resume, use_ema=use_ema)
    return model.eval()


def add_use_ema_argument(parser):
    """--use_ema: the tools load a checkpoint's trained weights unless asked for its EMA."""
    parser.add_argument('--use_ema', action='store_true',
                        help="load the checkpoint's EMA weights (model_ema) instead of its trained weights")


def image_transform(input_size):
    """Resize to input_size x input_size (as RepLKNet's ERF study resized to 1024x1024), ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize((input_size, input_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def skimage_photos():
    """The built-in photos as RGB PIL images."""
    import skimage.data
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        yield Image.fromarray(pixels[..., :3].astype(np.uint8))


def folder_photos(folder):
    """The images of a folder (recursively, sorted by path) as RGB PIL images."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'--images {folder}: no such folder (or pass --images {BUILTIN_IMAGES} for the '
                                'photos that ship with scikit-image)')
    paths = sorted(os.path.join(root, file) for root, _, files in os.walk(folder) for file in files
                   if file.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f'--images {folder}: no image files ({", ".join(IMAGE_EXTENSIONS)}) in it')
    for path in paths:
        with Image.open(path) as image:
            yield image.convert('RGB')


def load_images(source, num_images, input_size):
    """Up to num_images images from a folder or the built-in photos, as a list of (3, size, size) tensors."""
    photos = skimage_photos() if source == BUILTIN_IMAGES else folder_photos(source)
    transform = image_transform(input_size)
    images = [transform(photo) for _, photo in zip(range(num_images), photos)]
    if len(images) < num_images:
        print(f'{source}: only {len(images)} images available (asked for {num_images}); using them all')
    return images
