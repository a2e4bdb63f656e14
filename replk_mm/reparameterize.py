"""Convert a trained segmentor/detector checkpoint with a UniRepLKNet or RepLKNet backbone for the `_deploy` configs.

    python -m replk_mm.reparameterize CHECKPOINT TARGET [--config CONFIG] [--cfg-options key=value ...]

Only the backbone changes: it is rebuilt from the config's `model.backbone`, loaded strictly from the checkpoint's
`backbone.*` weights, re-parameterised (BN statistics are used, so eval mode) and written back; all other weights
(neck, heads) are copied unchanged. Test the result with the `_deploy` twin of the training config (UniRepLKNet:
model.backbone.deploy=True; RepLKNet: model.backbone.small_kernel_merged=True).

Needs torch (+ timm for the model files) and, to read the config, mmengine; not mmseg, mmdet or mmcv. The config is
the one MMEngine stores in every checkpoint it writes (meta['cfg']; MMCV 1.x: meta['config']) unless --config names a
file (reading a file whose `_base_` are `mmseg::` / `mmdet::` files needs that framework installed). The checkpoint is
read weights-only with MMEngine's allow-list (replk_mm/checkpoints.py); --unsafe_load_checkpoint unpickles anything.
"""
import argparse
import ast
import os
import tempfile

import torch

import checkpoint
import utils
from .backbones import BACKBONES
from .checkpoints import load_checkpoint


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
    prefix = 'backbone.'
    backbone_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not backbone_state:
        raise ValueError("the checkpoint has no 'backbone.*' weights: pass a detector/segmentor checkpoint")
    dtype = next(v.dtype for v in backbone_state.values() if v.is_floating_point())  # merged in the checkpoint's
    backbone = BACKBONES[backbone_type](**cfg).to(dtype).eval()
    checkpoint.load_model_state(backbone, backbone_state, strict=True, source="the checkpoint's backbone.* weights")
    with torch.no_grad():
        if backbone_type == 'UniRepLKNetBackbone':
            backbone.reparameterize_unireplknet()
        else:
            backbone.structural_reparam()
    merged = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    merged.update({prefix + k: v for k, v in backbone.state_dict().items()})
    return merged


def _config_from_text(text: str):
    """An MMEngine Config from the Python text a checkpoint stores, without running its custom_imports."""
    from mmengine.config import Config
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'checkpoint_config.py')
        with open(path, 'w') as file:
            file.write(text)
        return Config.fromfile(path, import_custom_modules=False)


def backbone_config(trained: dict, config_path=None, cfg_options=None) -> dict:
    """`model.backbone` of --config, else of the config stored in the checkpoint; --cfg-options merged in."""
    from mmengine.config import Config
    if config_path is not None:
        cfg = Config.fromfile(config_path, import_custom_modules=False)
    else:
        meta = trained.get('meta') or {}
        text = meta.get('cfg') or meta.get('config')
        if not text:
            raise ValueError('the checkpoint stores no config (meta.cfg / meta.config): pass the training config '
                             'with --config CONFIG')
        cfg = _config_from_text(text)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg.model.backbone.to_dict()


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
    parser.add_argument('checkpoint', help='trained segmentor/detector checkpoint (.pth)')
    parser.add_argument('target', help='where to write the re-parameterised checkpoint')
    parser.add_argument('--config', help='the training config (default: the one stored in the checkpoint)')
    parser.add_argument('--cfg-options', nargs='+', type=_parse_option, default=[],
                        help='override config entries, e.g. model.backbone.with_cp=False')
    parser.add_argument('--unsafe_load_checkpoint', type=utils.str2bool, nargs='?', const=True, default=False,
                        help='unpickle anything in CHECKPOINT (weights_only=False): only for files you trust')
    args = parser.parse_args(argv)

    trained = load_checkpoint(args.checkpoint, unsafe=args.unsafe_load_checkpoint)
    state_dict = trained.get('state_dict', trained)
    backbone_cfg = backbone_config(trained, args.config, dict(args.cfg_options))
    # Training state (optimizer, message hub) is dropped; meta keeps e.g. dataset_meta, which the test tools read.
    meta = {k: v for k, v in (trained.get('meta') or {}).items() if k not in ('cfg', 'config')}
    torch.save({'meta': meta, 'state_dict': reparameterize_backbone_state(backbone_cfg, state_dict)}, args.target)
    print(f'saved the re-parameterised checkpoint to {args.target}')


if __name__ == '__main__':
    main()
