"""unireplknet.py: state_dict compatibility with the release, strict/non-strict loading, pretrained weights.

tests/data/unireplknet_keys/ holds the release's key lists (name, shape, dtype per line). Nothing here touches the
network: the Hugging Face download function is replaced by one that fails the test, and TORCH_HOME points into
tmp_path so no user cache is read.
"""
import argparse
import logging
import os

import pytest
import timm
import torch

import unireplknet
from unireplknet import UniRepLKNet, load_checkpoint_non_strict, load_checkpoint_strict, read_state_dict

KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'unireplknet_keys')
TINY_DIMS = (8, 16, 32, 64)
A_IN1K_FILE = 'unireplknet_a_in1k_224_acc77.03.pth'


def reference_shapes(name):
    """{key: (shape, dtype)} in file order; the features list has no dtype column (dtype None)."""
    entries = {}
    with open(os.path.join(KEYS_DIR, f'{name}.txt')) as f:
        for line in f:
            key, shape, *dtype = line.rstrip('\n').split('\t')
            entries[key] = (tuple(int(d) for d in shape.strip('()').split(',') if d.strip()),
                            dtype[0] if dtype else None)
    return entries


def model_shapes(model, with_dtype=True):
    return {k: (tuple(v.shape), str(v.dtype).replace('torch.', '') if with_dtype else None)
            for k, v in model.state_dict().items()}


def reference_state_dict(name, device='cpu', seed=0):
    """A state_dict in the release's format with random values (positive BN variances)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in reference_shapes(name).items():
        if device == 'meta':
            state[key] = torch.empty(shape, dtype=getattr(torch, dtype or 'float32'), device='meta')
        elif dtype == 'int64' or key.endswith('num_batches_tracked'):
            state[key] = torch.randint(0, 1000, shape, generator=generator)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def meta_model(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


# ---- keys and shapes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('reference, build', [
    ('unireplknet_a_train', lambda: meta_model('unireplknet_a')),
    ('unireplknet_a_deploy', lambda: meta_model('unireplknet_a', deploy=True)),
    ('unireplknet_t_train', lambda: meta_model('unireplknet_t')),
    ('unireplknet_a_features_train', lambda: meta_model('unireplknet_a', features_only=True)),
    ('unireplknet_a_features_train', lambda: UniRepLKNet(num_classes=None, init_cfg=dict(checkpoint=None),
                                                         depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))),
], ids=['a', 'a_deploy', 't', 'a_features_only', 'a_init_cfg_backbone'])
def test_state_dict_keys_and_shapes_equal_the_release(reference, build):
    expected = reference_shapes(reference)
    actual = model_shapes(build(), with_dtype=None not in {dtype for _, dtype in expected.values()})
    assert actual == expected
    assert list(actual) == list(expected)  # same order as well


def test_reparameterised_a_has_the_release_deploy_keys():
    model = meta_model('unireplknet_a')
    model.reparameterize_unireplknet()
    assert model_shapes(model) == reference_shapes('unireplknet_a_deploy')


# ---- strict loading --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('form', ['train', 'deploy'])
def test_release_format_checkpoint_loads_strictly(form, tmp_path):
    state = reference_state_dict(f'unireplknet_a_{form}')
    path = tmp_path / 'checkpoint.pth'
    # Training checkpoints come wrapped in {'model': ...}; reparameterised ones as a bare state_dict.
    torch.save({'model': state, 'args': argparse.Namespace(model='unireplknet_a')} if form == 'train' else state, path)
    model = timm.create_model('unireplknet_a', deploy=form == 'deploy', attempt_use_lk_impl=False)
    load_checkpoint_strict(model, str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_checkpoint_of_another_variant_lists_the_differences():
    model = meta_model('unireplknet_a')
    with pytest.raises(ValueError) as error:
        load_checkpoint_strict(model, reference_state_dict('unireplknet_t_train', device='meta'))
    message = str(error.value)
    assert 'Checkpoint: unireplknet_t in training form; model: unireplknet_a in training form' in message
    assert 'downsample_layers.0.0.weight: checkpoint (40, 3, 3, 3) vs model (20, 3, 3, 3)' in message
    extra = set(reference_shapes('unireplknet_t_train')) - set(reference_shapes('unireplknet_a_train'))
    assert f'unexpected keys (in the checkpoint, not in the model) ({len(extra)})' in message
    assert 'stages.0.2.gamma' in message


def test_training_checkpoint_into_a_deploy_model_says_so():
    model = meta_model('unireplknet_a', deploy=True)
    with pytest.raises(ValueError) as error:
        load_checkpoint_strict(model, reference_state_dict('unireplknet_a_train', device='meta'))
    message = str(error.value)
    assert 'Checkpoint: unireplknet_a in training form; model: unireplknet_a in deploy (reparameterised) form' in message
    assert 'stages.0.0.norm.running_var' in message and 'deploy=True' in message
    without_head = {k: v for k, v in reference_state_dict('unireplknet_a_train', device='meta').items()
                    if not k.startswith(('head.', 'norm.'))}
    with pytest.raises(ValueError, match=r'missing keys \(in the model, not in the checkpoint\) \(4\):\n    norm.weight'):
        load_checkpoint_strict(meta_model('unireplknet_a'), without_head)


def test_read_state_dict_unwraps_and_strips_ddp_prefix(tmp_path):
    state = {'module.head.weight': torch.ones(2, 3)}
    torch.save({'state_dict': state}, tmp_path / 'ddp.pth')
    assert list(read_state_dict(str(tmp_path / 'ddp.pth'))) == ['head.weight']
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        read_state_dict(str(tmp_path / 'missing.pth'))


# ---- backbone (init_cfg) loading ----------------------------------------------------------------------------------

def tiny_backbone(checkpoint, **kwargs):
    return UniRepLKNet(num_classes=None, init_cfg=dict(type='Pretrained', checkpoint=checkpoint), depths=(1, 1, 2, 1),
                       dims=TINY_DIMS, kernel_sizes=((3,), (13,), (13, 3), (13,)), **kwargs)


def tiny_classifier(**kwargs):
    return UniRepLKNet(depths=(1, 1, 2, 1), dims=TINY_DIMS, kernel_sizes=((3,), (13,), (13, 3), (13,)), **kwargs)


def test_init_cfg_loads_a_classification_checkpoint_non_strictly(tmp_path, caplog):
    source = tiny_classifier()
    path = tmp_path / 'in1k.pth'
    torch.save({'model': source.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger='unireplknet'):
        backbone = tiny_backbone(str(path))
    assert "Keys missing from the checkpoint (kept as initialised): ['norm0.weight'" in caplog.text
    assert 'head.weight' in caplog.text and 'norm.weight' in caplog.text
    loaded, expected = backbone.state_dict(), source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.items() if not k.startswith('norm'))


def test_init_cfg_shape_mismatch_raises(tmp_path):
    path = tmp_path / 'wide.pth'
    torch.save(UniRepLKNet(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                           kernel_sizes=((3,), (13,), (13, 3), (13,))).state_dict(), path)
    with pytest.raises(ValueError, match=r'(?s)shape mismatches .*downsample_layers.0.0.weight: checkpoint \(8, 3, 3, 3\) '
                                         r'vs model \(4, 3, 3, 3\)'):
        tiny_backbone(str(path))


def test_init_cfg_takes_the_backbone_of_a_segmentor_checkpoint(tmp_path):
    source = tiny_backbone(None)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(3, 3)
    torch.save({'state_dict': state, 'meta': {}}, tmp_path / 'segmentor.pth')
    backbone = tiny_backbone(str(tmp_path / 'segmentor.pth'))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in backbone.state_dict().items())
    with pytest.raises(ValueError, match='missing keys'):
        load_checkpoint_non_strict(backbone, {'unrelated.weight': torch.zeros(1)})


# ---- pretrained weights ----------------------------------------------------------------------------------------

@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network: HF offline mode, a download function that fails the test, and an empty torch hub folder."""
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError(f'the Hugging Face hub must not be called in tests: {args} {kwargs}')

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', no_download)
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


@pytest.fixture(scope='module')
def tiny_a_checkpoint(tmp_path_factory):
    """A released-format checkpoint of unireplknet_a with tiny dims, saved like the release ({'model': ...})."""
    torch.manual_seed(0)
    # fast_cpu_kernels=False: as a reference for deploy models, its DRBs add up their branches (the fast path's eval
    # form would run get_kernel_bias(), the function reparameterisation uses).
    source = timm.create_model('unireplknet_a', dims=TINY_DIMS, attempt_use_lk_impl=False, fast_cpu_kernels=False)
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if name.endswith('running_var'):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith('running_mean'):
                buffer.uniform_(-0.5, 0.5)
        for block in source.blocks():
            block.act[1].beta.normal_(0, 0.1)
            block.gamma.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp('released') / A_IN1K_FILE
    torch.save({'model': source.state_dict()}, path)
    return path, source.eval()


def assert_same_weights(model, source, skip=()):
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(skip):
            assert torch.equal(value, expected[key]), key


def test_pretrained_from_a_local_file(offline_hub, tiny_a_checkpoint):
    path, source = tiny_a_checkpoint
    model = timm.create_model('unireplknet_a', pretrained=True, dims=TINY_DIMS, attempt_use_lk_impl=False,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(model, source)
    assert model.pretrained_cfg['file'] == str(path)


def test_release_flags_and_timm_tags_read_the_torch_hub_folder(offline_hub, tiny_a_checkpoint):
    path, source = tiny_a_checkpoint
    offline_hub.mkdir(parents=True)
    os.symlink(path, offline_hub / A_IN1K_FILE)
    assert_same_weights(unireplknet.unireplknet_a(in_1k_pretrained=True, dims=TINY_DIMS), source)
    assert_same_weights(timm.create_model('unireplknet_a.in1k', pretrained=True, dims=TINY_DIMS), source)


def test_offline_error_names_the_file_and_where_to_put_it(offline_hub, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError('offline mode is enabled')

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', offline)
    with pytest.raises(RuntimeError) as error:
        timm.create_model('unireplknet_s.in22k', pretrained=True)
    message = str(error.value)
    assert 'unireplknet_s_in22k_pretrain.pth' in message and 'offline mode is enabled' in message
    assert str(offline_hub / 'unireplknet_s_in22k_pretrain.pth') in message
    assert "pretrained_cfg_overlay=dict(file='/path/to/unireplknet_s_in22k_pretrain.pth')" in message


def test_release_flags_follow_the_release_precedence_and_reject_missing_weights():
    pop = unireplknet._pop_legacy_pretrained_tag
    assert pop('unireplknet_s', dict(in_22k_to_1k=True, in_1k_pretrained=True)) == 'in1k'
    assert pop('unireplknet_s', dict(in_22k_to_1k=True, in_22k_pretrained=True)) == 'in22k'
    assert pop('unireplknet_b', dict(in_22k_to_1k=True)) == 'in22k_ft_in1k'
    kwargs = dict(in_1k_pretrained=False, num_classes=3)
    assert pop('unireplknet_a', kwargs) is None and kwargs == dict(num_classes=3)
    with pytest.raises(ValueError, match='unireplknet_a has no released in22k weights .* released: in1k'):
        unireplknet.unireplknet_a(in_22k_pretrained=True)
    with pytest.raises(ValueError, match='unireplknet_b has no released in1k weights'):
        pop('unireplknet_b', dict(in_1k_pretrained=True))


def test_pretrained_with_other_num_classes_keeps_a_new_head(offline_hub, tiny_a_checkpoint, caplog):
    path, source = tiny_a_checkpoint
    with caplog.at_level(logging.INFO, logger='unireplknet'):
        model = timm.create_model('unireplknet_a', pretrained=True, num_classes=10, dims=TINY_DIMS,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    assert 'Not loading the pretrained classifier (1000 classes)' in caplog.text
    assert model.head.out_features == 10
    assert_same_weights(model, source, skip=('head.',))


def test_pretrained_into_a_deploy_model_is_reparameterised(offline_hub, tiny_a_checkpoint):
    path, source = tiny_a_checkpoint
    model = timm.create_model('unireplknet_a', pretrained=True, deploy=True, dims=TINY_DIMS,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.deploy and len(model.state_dict()) == 156
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-6)


def test_pretrained_features_only_and_in_chans_1(offline_hub, tiny_a_checkpoint):
    path, source = tiny_a_checkpoint
    backbone = timm.create_model('unireplknet_a', pretrained=True, features_only=True, dims=TINY_DIMS,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(backbone, source, skip=('norm0', 'norm1', 'norm2', 'norm3'))
    stem = source.state_dict()['downsample_layers.0.0.weight']
    for features_only in (False, True):
        mono = timm.create_model('unireplknet_a', pretrained=True, in_chans=1, dims=TINY_DIMS,
                                 features_only=features_only, pretrained_cfg_overlay=dict(file=str(path)))
        torch.testing.assert_close(mono.downsample_layers[0][0].weight, stem.sum(dim=1, keepdim=True))
        assert_same_weights(mono, source, skip=('downsample_layers.0.0.weight', 'norm0', 'norm1', 'norm2', 'norm3'))


def test_missing_local_file_is_named(offline_hub):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        timm.create_model('unireplknet_a', pretrained=True, pretrained_cfg_overlay=dict(file='/nowhere.pth'))
