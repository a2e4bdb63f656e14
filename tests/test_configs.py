"""configs/: every YAML loads through main.py, uses known keys with the right types, names a registered
model, documents its total batch and launch command, and matches the seed README's commands."""
import pathlib
import re

import pytest
import timm
import yaml

import main
import replknet  # noqa: F401  (registers replknet_*)
import unireplknet  # noqa: F401  (registers unireplknet_*)

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'configs').rglob('*.yaml'))
RECIPE_CONFIGS = [c for c in CONFIGS if c.split('/')[1] in ('in1k', 'in22k', 'in22k_ft_in1k', 'replknet')]

# The seed README's commands, transcribed: config -> (GPUs, batch_size, update_freq, options).
README = {
    'configs/in1k/unireplknet_a_in1k_300ep.yaml': (4, 128, 8, dict(drop_path=0.0, lr=4e-3, mixup=0.3, cutmix=0.3)),
    'configs/in1k/unireplknet_f_in1k_300ep.yaml': (4, 128, 8, dict(drop_path=0.0, lr=4e-3, mixup=0.3, cutmix=0.3)),
    'configs/in1k/unireplknet_p_in1k_300ep.yaml': (4, 128, 8, dict(drop_path=0.1, lr=4e-3, mixup=0.3, cutmix=0.3)),
    'configs/in1k/unireplknet_n_in1k_300ep.yaml': (4, 128, 8, dict(drop_path=0.1, lr=4e-3, mixup=0.5, cutmix=0.5)),
    'configs/in1k/unireplknet_t_in1k_300ep.yaml': (4, 128, 8, dict(drop_path=0.2, lr=4e-3, mixup=0.8, cutmix=1.0)),
    'configs/in1k/unireplknet_s_in1k_300ep.yaml': (8, 64, 8, dict(drop_path=0.4, lr=4e-3, mixup=0.8, cutmix=1.0)),
    'configs/in22k/unireplknet_s_in22k_pretrain.yaml': (16, 32, 8, dict(drop_path=0.1, lr=4e-3, epochs=90, warmup_epochs=5,
                                                                        data_set='image_folder', nb_classes=21841, disable_eval=True)),
    'configs/in22k/unireplknet_b_in22k_pretrain.yaml': (16, 32, 8, dict(drop_path=0.1, lr=4e-3, epochs=90, warmup_epochs=5,
                                                                        data_set='image_folder', nb_classes=21841, disable_eval=True)),
    'configs/in22k/unireplknet_l_in22k_pretrain.yaml': (16, 64, 4, dict(drop_path=0.1, lr=1e-3, input_size=192, epochs=90,
                                                                        warmup_epochs=5, nb_classes=21841, disable_eval=True)),
    'configs/in22k/unireplknet_xl_in22k_pretrain.yaml': (32, 32, 4, dict(drop_path=0.2, lr=1e-3, input_size=192, epochs=90,
                                                                         warmup_epochs=5, nb_classes=21841, disable_eval=True)),
    'configs/in22k_ft_in1k/unireplknet_s_in22k_ft_in1k_384.yaml': (4, 64, 2, dict(
        drop_path=0.2, input_size=384, lr=5e-5, warmup_epochs=0, epochs=30, weight_decay=1e-8, layer_decay=0.8,
        head_init_scale=0.001, cutmix=0.0, mixup=0.0)),
    'configs/in22k_ft_in1k/unireplknet_b_in22k_ft_in1k_384.yaml': (4, 64, 2, dict(
        drop_path=0.2, input_size=384, lr=5e-5, warmup_epochs=0, epochs=30, weight_decay=1e-8, layer_decay=0.8,
        head_init_scale=0.001, cutmix=0.0, mixup=0.0)),
    'configs/in22k_ft_in1k/unireplknet_l_in22k_ft_in1k_384.yaml': (4, 64, 2, dict(
        drop_path=0.3, input_size=384, lr=5e-5, model_ema=True, model_ema_eval=True, warmup_epochs=0, epochs=20,
        weight_decay=1e-8, smoothing=0.3, layer_decay=0.8, head_init_scale=0.001, cutmix=0.0, mixup=0.0)),
    'configs/in22k_ft_in1k/unireplknet_xl_in22k_ft_in1k_384.yaml': (8, 32, 2, dict(
        drop_path=0.3, input_size=384, lr=5e-5, model_ema=True, model_ema_eval=True, warmup_epochs=0, epochs=20,
        weight_decay=1e-8, smoothing=0.3, layer_decay=0.8, head_init_scale=0.001, cutmix=0.0, mixup=0.0)),
}
TOTAL_BATCH = re.compile(r'# Total batch: (\d+) = (\d+) GPUs .*x (\d+) \(batch_size\) x (\d+) \(update_freq\)')


def load(config):
    text = (REPO / config).read_text()
    return text, yaml.safe_load(text)


@pytest.fixture(scope='module')
def parser():
    return main.get_args_parser()


@pytest.mark.parametrize('config', CONFIGS)
def test_config_keys_are_main_options_with_matching_types(config, parser):
    _, values = load(config)
    defaults = {action.dest: action.default for action in parser._actions}
    unknown = set(values) - set(defaults)
    assert not unknown, f'{config}: not main.py options: {sorted(unknown)}'
    for key, value in values.items():
        default = defaults[key]
        if isinstance(default, bool):
            assert isinstance(value, bool), (config, key, value)
        elif isinstance(default, (int, float)):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (config, key, value)
        elif isinstance(default, str):
            assert isinstance(value, str), (config, key, value)
    args = main.parse_args(['--config', str(REPO / config)])
    for key, value in values.items():
        assert getattr(args, key) == value, (config, key)


@pytest.mark.parametrize('config', CONFIGS)
def test_config_model_is_registered(config):
    _, values = load(config)
    assert values['model'] in timm.list_models(values['model'])


@pytest.mark.parametrize('config', RECIPE_CONFIGS)
def test_header_documents_total_batch_and_launch_command(config):
    text, values = load(config)
    match = TOTAL_BATCH.search(text)
    assert match, f'{config}: no "Total batch: N = G GPUs ... x B (batch_size) x U (update_freq)" line'
    total, gpus, batch, update_freq = map(int, match.groups())
    assert gpus * batch * update_freq == total
    assert (batch, update_freq) == (values['batch_size'], values['update_freq'])
    assert f'--config {config}' in text
    single_node = re.search(r'--nproc_per_node=(\d+) main\.py --config ' + re.escape(config), text)
    multi_node = re.search(r'--nodes (\d+) --ngpus (\d+) --config ' + re.escape(config), text)
    launched = int(single_node.group(1)) if single_node else int(multi_node.group(1)) * int(multi_node.group(2))
    assert launched == gpus
    assert text.startswith('#') and 'Source:' in text


@pytest.mark.parametrize('config', sorted(README))
def test_unireplknet_recipes_match_the_readme_commands(config):
    text, values = load(config)
    gpus, batch, update_freq, options = README[config]
    total = int(TOTAL_BATCH.search(text).group(1))
    assert total == (512 if 'in22k_ft_in1k' in config else 4096)
    assert int(TOTAL_BATCH.search(text).group(2)) == gpus
    assert (values['batch_size'], values['update_freq']) == (batch, update_freq)
    for key, expected in options.items():
        assert values[key] == expected, (config, key)


def test_every_readme_recipe_has_a_config():
    assert set(README) <= set(CONFIGS)


# --- tools/plot_log.py (kept here: it reads the log.txt that these recipes produce) ----------------

def test_plot_log_draws_a_png_and_names_missing_keys(tmp_path):
    import json
    from tools.plot_log import plot_logs

    run = tmp_path / 'run'
    run.mkdir()
    records = [dict(epoch=e, train_loss=2.0 - e / 4, train_lr=1e-3, test_acc1=10.0 * e) for e in range(4)]
    (run / 'log.txt').write_text(''.join(json.dumps(r) + '\n' for r in records))
    out = plot_logs([str(run)], keys=['train_loss', 'test_acc1'], out=str(tmp_path / 'curves.png'))
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.endswith('curves.png')
    with pytest.raises(ValueError, match='available keys: epoch, test_acc1, train_loss, train_lr'):
        plot_logs([str(run / 'log.txt')], keys=['test_acc5'], out=str(tmp_path / 'x.png'))
