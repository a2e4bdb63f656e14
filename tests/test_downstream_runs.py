"""The shipped configs through MMEngine's Runner, as `tools/train.py` / `tools/test.py` run them (slow, CPU).

A shipped UperNet (mmseg 1.2.2) and Cascade Mask R-CNN (mmdet 3.3.0) config, with a tiny backbone and image sizes
shrunk, trains 2 iterations on tiny generated ADE20K / COCO-format data, validates, checkpoints (best kept), tests
and resumes; `python -m replk_mm.reparameterize` converts the checkpoint and the `_deploy` twin of the config gives
the same predictions. Checkpoints are read by MMEngine's own loaders with torch's default weights_only=True, which
works through the allow-list that the configs' custom_imports install (replk_mm/checkpoints.py).
"""
import json
import os
import subprocess
import sys

import mmcv_ext_standin
import numpy as np
import pytest
import torch
from PIL import Image

mmcv_ext_standin.install()

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from replk_mm import reparameterize  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('single_thread'),
              pytest.mark.filterwarnings('ignore:pkg_resources is deprecated')]  # mmengine 0.10.7's import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BACKBONE = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13, 3), (13,)),
                     init_cfg=None)
IMAGE_SIZE = 64


def write_image(path, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(path)


def make_ade20k(root):
    """ADEChallengeData2016 layout: JPEG images and PNG label maps (0 = ignored, 1..150 = classes)."""
    rng = np.random.default_rng(0)
    for split, count in (('training', 4), ('validation', 2)):
        for i in range(count):
            write_image(os.path.join(root, 'images', split, f'ADE_{i}.jpg'), rng)
            labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            labels[:32, :32], labels[32:, 16:] = 1 + i, 5  # blocks of a few classes
            os.makedirs(os.path.join(root, 'annotations', split), exist_ok=True)
            Image.fromarray(labels).save(os.path.join(root, 'annotations', split, f'ADE_{i}.png'))
    return root


def make_coco(root):
    """COCO instances layout: train2017/ and val2017/ images, annotations/instances_*.json with polygons."""
    from mmdet.datasets import CocoDataset
    rng = np.random.default_rng(0)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CocoDataset.METAINFO['classes'])]
    for split, count in (('train2017', 4), ('val2017', 2)):
        images, annotations = [], []
        for i in range(count):
            write_image(os.path.join(root, split, f'{i}.jpg'), rng)
            images.append(dict(id=i, file_name=f'{i}.jpg', width=IMAGE_SIZE, height=IMAGE_SIZE))
            for j, (x, y, w, h) in enumerate([(4, 4, 30, 40), (30, 20, 28, 36)]):
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i, category_id=categories[2 * j]['id'], bbox=[x, y, w, h],
                    area=w * h, iscrowd=0, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
        with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return root


def shrink_image_sizes(node):
    """Every resize scale / crop size of a pipeline, made small (the structure of the pipeline stays)."""
    if isinstance(node, list):
        return [shrink_image_sizes(n) for n in node]
    if not isinstance(node, dict):
        return node
    shrunk = {k: shrink_image_sizes(v) for k, v in node.items()}
    for key, small in (('scale', (96, 64)), ('scales', [(96, 64)]), ('crop_size', (48, 48))):
        if key in shrunk:
            shrunk[key] = small
    return shrunk


def tiny_run_config(path, data_root, work_dir, **model):
    """A shipped config with a tiny backbone, shrunk images, 2 iterations, no worker processes."""
    cfg = Config.fromfile(path)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    cfg.model.backbone.update(TINY_BACKBONE)
    cfg.merge_from_dict(model)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        cfg[loader].dataset.update(data_root=data_root, pipeline=shrink_image_sizes(cfg[loader].dataset.pipeline))
    cfg.test_pipeline = shrink_image_sizes(cfg.test_pipeline)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1 if cfg.train_cfg.get('by_epoch', True) is not False else 2
    return cfg


def train_and_test(cfg, metric):
    """2 training iterations + validation + checkpoint (best kept) + test; the last checkpoint's path."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    metrics = runner.test()
    assert metric in metrics and np.isfinite(metrics[metric])
    assert any(name.startswith('best_') for name in os.listdir(cfg.work_dir))
    with open(os.path.join(cfg.work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def converted(checkpoint, target):
    reparameterize.main([checkpoint, str(target)])  # the config comes from the checkpoint (meta['cfg'])
    return str(target)


@pytest.fixture(scope='module')
def ade20k(tmp_path_factory):
    return make_ade20k(str(tmp_path_factory.mktemp('ADEChallengeData2016')))


def test_upernet_trains_tests_resumes_and_deploys_through_runner(ade20k, tmp_path):
    from mmseg.apis import inference_model, init_model
    config = os.path.join(REPO, 'segmentation', 'configs', 'unireplknet', 'upernet_unireplknet_t_512_160k_ade20k.py')
    model = {'model.decode_head.in_channels': [8, 16, 24, 32], 'model.decode_head.channels': 16,
             'model.auxiliary_head.in_channels': 24, 'model.auxiliary_head.channels': 8,
             'model.data_preprocessor.size': (48, 48), 'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
             'optim_wrapper.paramwise_cfg.num_layers': 6}
    cfg = tiny_run_config(config, ade20k, tmp_path / 'train', **model)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1),
                           dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1, end=2)]
    last = train_and_test(cfg, 'mIoU')

    resumed = tiny_run_config(config, ade20k, tmp_path / 'train', **dict(model, **{'train_cfg.max_iters': 3}))
    resumed.param_scheduler, resumed.resume, resumed.load_from = cfg.param_scheduler, True, last
    runner = Runner.from_cfg(resumed)
    runner.train()
    assert runner.iter == 3

    deploy_cfg = tiny_run_config(config.replace('.py', '_deploy.py'), ade20k, tmp_path / 'deploy', **model)
    image = os.path.join(ade20k, 'images', 'validation', 'ADE_0.jpg')
    trained = inference_model(init_model(cfg, last, device='cpu'), image)
    deployed_model = init_model(deploy_cfg, converted(last, tmp_path / 'deploy.pth'), device='cpu')
    assert all(m.deploy for m in deployed_model.backbone.modules() if hasattr(m, 'deploy'))
    deployed = inference_model(deployed_model, image)
    torch.testing.assert_close(deployed.seg_logits.data, trained.seg_logits.data, rtol=1e-4, atol=1e-4)
    assert torch.equal(deployed.pred_sem_seg.data, trained.pred_sem_seg.data)


def narrow_heads(cfg):
    """The shipped 4conv1fc heads cost ~1 GFLOP per RoI at 256 channels: 32 channels, 32 RoIs instead of 512."""
    for stage, head in zip(cfg.model.train_cfg.rcnn, cfg.model.roi_head.bbox_head):
        stage.sampler.num = 32
        head.update(conv_out_channels=32, fc_out_channels=64)
    cfg.model.roi_head.mask_head.conv_out_channels = 32
    return cfg


def test_cascade_mask_rcnn_trains_tests_and_deploys_through_runner(tmp_path):
    from mmdet.apis import inference_detector, init_detector
    coco = make_coco(str(tmp_path / 'coco'))
    config = os.path.join(REPO, 'detection', 'configs', 'unireplknet',
                          'casc_mask_rcnn_unireplknet_t_in1k_fpn_3x_coco.py')
    model = {'model.neck.in_channels': [8, 16, 24, 32], 'model.train_cfg.rpn_proposal.max_per_img': 200,
             'model.test_cfg.rpn.max_per_img': 100, 'model.test_cfg.rcnn.score_thr': 0.0,
             'model.test_cfg.rcnn.max_per_img': 20, 'train_cfg.max_epochs': 1,
             'val_evaluator.ann_file': os.path.join(coco, 'annotations', 'instances_val2017.json'),
             'test_evaluator.ann_file': os.path.join(coco, 'annotations', 'instances_val2017.json')}
    cfg = narrow_heads(tiny_run_config(config, coco, tmp_path / 'train', **model))
    last = train_and_test(cfg, 'coco/bbox_mAP')  # 4 images, batch 2: the one epoch is 2 iterations

    deploy_cfg = narrow_heads(tiny_run_config(config.replace('.py', '_deploy.py'), coco, tmp_path / 'deploy', **model))
    image = os.path.join(coco, 'val2017', '0.jpg')
    trained = inference_detector(init_detector(cfg, last, device='cpu'), image).pred_instances
    deployed = inference_detector(init_detector(deploy_cfg, converted(last, tmp_path / 'deploy.pth'), device='cpu'),
                                  image).pred_instances
    assert len(trained) > 0
    torch.testing.assert_close(deployed.bboxes, trained.bboxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(deployed.scores, trained.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(deployed.labels, trained.labels)


def test_reparameterize_runs_without_mmseg_mmdet_and_mmcv(ade20k, tmp_path):
    """`python -m replk_mm.reparameterize` on a Runner checkpoint in a process where mmseg, mmdet and mmcv cannot be
    imported: torch + mmengine are enough (the config comes from the checkpoint)."""
    config = os.path.join(REPO, 'segmentation', 'configs', 'unireplknet', 'upernet_unireplknet_t_512_160k_ade20k.py')
    cfg = tiny_run_config(config, ade20k, tmp_path / 'train', **{
        'model.decode_head.in_channels': [8, 16, 24, 32], 'model.decode_head.channels': 16,
        'model.auxiliary_head.in_channels': 24, 'model.auxiliary_head.channels': 8,
        'model.data_preprocessor.size': (48, 48), 'train_cfg.max_iters': 1, 'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1})
    Runner.from_cfg(cfg).train()
    blocked = "import sys; sys.modules.update(mmseg=None, mmdet=None, mmcv=None); import runpy; "
    command = [sys.executable, '-c', blocked + "runpy.run_module('replk_mm.reparameterize', run_name='__main__')",
               os.path.join(cfg.work_dir, 'iter_1.pth'), str(tmp_path / 'deploy.pth')]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    converted = torch.load(tmp_path / 'deploy.pth')['state_dict']
    assert 'backbone.stages.1.0.dwconv.lk_origin.bias' in converted  # the dilated branches were merged
    assert not any('dil_conv' in key or 'origin_bn' in key for key in converted)
