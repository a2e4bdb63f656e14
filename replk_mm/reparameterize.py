"""Convert a trained detector/segmentor checkpoint with a UniRepLKNet or RepLKNet backbone to the deploy form.

Only the backbone changes: it is rebuilt from the config's `model.backbone`, loaded strictly from the checkpoint's
`backbone.*` weights, re-parameterised (BN statistics are used, so eval mode) and written back; all other weights
(neck, heads) are copied unchanged. Test the result with the backbone in deploy form
(UniRepLKNet: model.backbone.deploy=True; RepLKNet: model.backbone.small_kernel_merged=True).
"""
import argparse
import ast

import torch

import unireplknet
from .backbones import BACKBONES


def reparameterize_backbone_state(backbone_cfg: dict, state_dict: dict) -> dict:
    """A detector/segmentor state_dict with the `backbone.*` entries replaced by their re-parameterised form."""
    cfg = dict(backbone_cfg)
    backbone_type = cfg.pop('type', None)
    if backbone_type not in BACKBONES:
        raise ValueError(f'model.backbone.type is {backbone_type!r}; reparameterisation supports {sorted(BACKBONES)}')
    # The checkpoint holds every backbone weight, so no ImageNet initialisation; build the training form.
    cfg.update(init_cfg=None, use_sync_bn=False)
    if backbone_type == 'UniRepLKNetBackbone':
        cfg.update(deploy=False)
    else:
        cfg.update(small_kernel_merged=False, pretrained=None)
    backbone = BACKBONES[backbone_type](**cfg).eval()

    prefix = 'backbone.'
    backbone_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not backbone_state:
        raise ValueError("the checkpoint has no 'backbone.*' weights: pass a detector/segmentor checkpoint")
    backbone.load_state_dict(backbone_state, strict=True)
    with torch.no_grad():
        if backbone_type == 'UniRepLKNetBackbone':
            backbone.reparameterize_unireplknet()
        else:
            backbone.structural_reparam()
    merged = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    merged.update({prefix + k: v for k, v in backbone.state_dict().items()})
    return merged


def _load_config(path: str, cfg_options: dict):
    """The MM config (MMEngine for mmseg 1.x / mmdet 3.x, else MMCV 1.x), with --cfg-options merged in."""
    try:
        from mmengine.config import Config
    except ImportError:
        try:
            from mmcv import Config
        except ImportError as error:
            raise ImportError('reading an MM config needs mmengine (mmseg 1.x / mmdet 3.x) or mmcv 1.x '
                              '(mmseg 0.x / mmdet 2.x)') from error
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _parse_option(text: str):
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'--cfg-options entries look like key=value, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # plain strings such as paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained detector/segmentor checkpoint (.pth)')
    parser.add_argument('target', help='where to write the re-parameterised checkpoint')
    parser.add_argument('--cfg-options', nargs='+', type=_parse_option, default=[],
                        help='override config entries, e.g. model.backbone.with_cp=False')
    args = parser.parse_args(argv)

    cfg = _load_config(args.config, dict(args.cfg_options))
    checkpoint = unireplknet.read_state_dict(args.checkpoint)  # unwraps 'state_dict'
    state_dict = reparameterize_backbone_state(cfg.model.backbone.to_dict(), checkpoint)
    torch.save({'state_dict': state_dict}, args.target)
    print(f'saved the re-parameterised checkpoint to {args.target}')
