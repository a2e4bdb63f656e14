"""Write a small segmentation data set with real masks, offline: real photos with real objects pasted at known places.

    python segmentation/make_pasted_objects.py --out runs/pasted_objects
    python segmentation/smp_upernet.py --data runs/pasted_objects --num_classes 3 --size 64 64 --model unireplknet_a \
        --model_kwargs "{'depths': (1, 1, 1, 1), 'dims': (16, 32, 64, 128)}" --iters 300 --warmup_iters 20 \
        --batch_size 8 --lr 2e-3 --workers 0 --output runs/pasted_objects_upernet.pth

The segmentation quickstart (on the CPU, about a minute): segmentation/smp_upernet.py's UPerNet over a tiny
UniRepLKNet, trained from scratch and evaluated on held-out images, ends with mIoU well above the majority-class
baseline it prints next to it (README "Quickstart" in segmentation/README.md has the measured numbers).

Backgrounds are random crops of scikit-image's textured photos (grass, gravel, brick, the moon, coffee beans' table
...); onto each, one or two objects are pasted at random places and sizes: the cat's head of `chelsea` (an ellipse)
and a coin of `coins` (a disc), both real photo content. The pasted pixels are the masks, so the labels are exact.
ADE20K layout (what smp_upernet.py reads): images/{training,validation}/N.jpg and annotations/.../N.png with label 1
background, 2 cat, 3 coin (0 would be ADE's ignored 'other'); with --num_classes 3 the script trains 3 classes.
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = ('grass', 'gravel', 'brick', 'moon', 'camera', 'rocket', 'coffee', 'astronaut')
CLASSES = ('background', 'cat', 'coin')
SPLITS = {'training': 48, 'validation': 16}
IMAGE_SIZE = 64


def rgb(name):
    import skimage.data
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


def object_sprites():
    """(label, RGB patch, mask) of each object class: a real object cut out of a real photo."""
    cat = rgb('chelsea').crop((130, 20, 330, 200))          # the cat's head
    cat_mask = Image.new('L', cat.size)
    ImageDraw.Draw(cat_mask).ellipse((0, 0, cat.size[0] - 1, cat.size[1] - 1), fill=255)
    coin = rgb('coins').crop((22, 22, 70, 70))               # one coin, top left of the photo
    coin_mask = Image.new('L', coin.size)
    ImageDraw.Draw(coin_mask).ellipse((3, 3, coin.size[0] - 4, coin.size[1] - 4), fill=255)
    return [(1, cat, cat_mask), (2, coin, coin_mask)]


def make_example(rng, backgrounds, sprites):
    """(image, labels): a background crop with 1-2 objects pasted; labels 0 background, 1.. the objects (the file
    stores them +1, ADE's convention)."""
    background = backgrounds[rng.integers(len(backgrounds))]
    side = int(rng.integers(IMAGE_SIZE * 2, min(background.size)))
    left, top = (int(rng.integers(0, extent - side + 1)) for extent in background.size)
    image = background.crop((left, top, left + side, top + side)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    labels = Image.new('L', image.size, 0)
    for index in rng.choice(len(sprites), size=int(rng.integers(1, 3)), replace=False):
        label, patch, mask = sprites[index]
        size = int(rng.integers(IMAGE_SIZE // 4, IMAGE_SIZE // 2))
        patch, mask = patch.resize((size, size), Image.BILINEAR), mask.resize((size, size), Image.NEAREST)
        x, y = (int(rng.integers(0, IMAGE_SIZE - size)) for _ in range(2))
        image.paste(patch, (x, y), mask)
        labels.paste(label, (x, y, x + size, y + size), mask)
    return image, labels


def write_data_set(out, seed=0):
    rng = np.random.default_rng(seed)
    backgrounds = [rgb(name) for name in BACKGROUNDS]
    sprites = object_sprites()
    for split, count in SPLITS.items():
        for folder in ('images', 'annotations'):
            os.makedirs(os.path.join(out, folder, split), exist_ok=True)
        for number in range(count):
            image, labels = make_example(rng, backgrounds, sprites)
            image.save(os.path.join(out, 'images', split, f'{number:03d}.jpg'), quality=95)
            Image.fromarray(np.asarray(labels) + 1).save(os.path.join(out, 'annotations', split, f'{number:03d}.png'))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='output folder (ADE20K layout)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    write_data_set(args.out, args.seed)
    print(f'wrote {sum(SPLITS.values())} images with masks of {", ".join(CLASSES)} to {args.out}')


if __name__ == '__main__':
    main()
