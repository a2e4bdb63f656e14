"""Data-set specs (specs.py): recipe defaults, the one rule for options, missing extras, the dependency direction."""
import ast
import importlib.util
import os

import pytest

import main
import specs
from train_helpers import REPO_ROOT, run_plain_command


def parse_error(argv, capsys):
    """The message main.parse_args stops with."""
    with pytest.raises(SystemExit) as stop:
        main.parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_unset_options_take_the_data_sets_recipe():
    speech = main.parse_args(['--data_set', 'SPEECHCOMMANDS'])
    assert (speech.lr, speech.loss, speech.opt, speech.opt_betas, speech.lr_schedule) == \
        (2.5e-4, 'bce', 'adam', [0.95, 0.999], 'step')
    assert (speech.mixup, speech.cutmix, speech.aa, speech.reprob, speech.nb_classes) == (0.0, 0.0, 'none', 0.0, 35)
    digits = main.parse_args(['--data_set', 'DIGITS'])
    assert (digits.input_size, digits.nb_classes, digits.mixup) == (32, 10, 0.8)
    imagenet = main.parse_args([])
    assert (imagenet.input_size, imagenet.nb_classes, imagenet.mixup, imagenet.lr) == (224, 1000, 0.8, 4e-3)


def test_config_wins_over_the_recipe_and_flags_win_over_both(tmp_path):
    config = tmp_path / 'run.yaml'
    config.write_text('data_set: GLOBAL_TEMP\nlr: 0.01\nepochs: 4\n')
    args = main.parse_args(['--config', str(config), '--epochs', '2'])
    assert (args.lr, args.epochs, args.opt, args.early_stop_patience) == (0.01, 2, 'adam', 3)


@pytest.mark.parametrize('argv, option', [
    (['--data_set', 'MODELNET40', '--mixup', '0.8'], '--mixup'),
    (['--data_set', 'SPEECHCOMMANDS', '--input_size', '64'], '--input_size'),
    (['--data_set', 'GLOBAL_TEMP', '--smoothing', '0.1'], '--smoothing'),
    (['--data_set', 'GLOBAL_WIND', '--loss', 'ce'], '--loss'),
    (['--data_set', 'KINETICS400', '--crop_pct', '0.9'], '--crop_pct'),
    (['--data_set', 'DIGITS', '--pc_points', '64'], '--pc_points'),
    (['--data_set', 'MODELNET40', '--label_map', 'classes.txt'], '--label_map'),
])
def test_an_explicit_option_the_data_set_cannot_use_is_an_error_naming_it(argv, option, capsys):
    message = parse_error(argv, capsys)
    assert option in message and argv[1] in message and 'drop it' in message


def test_a_config_key_the_data_set_cannot_use_is_an_error_too(tmp_path, capsys):
    config = tmp_path / 'run.yaml'
    config.write_text('data_set: MODELNET40\ncutmix: 1.0\n')
    assert '--cutmix' in parse_error(['--config', str(config)], capsys)


@pytest.mark.parametrize('argv', [
    ['--data_set', 'MODELNET40', '--mixup', '0', '--cutmix', '0', '--aa', 'none', '--reprob', '0'],
    ['--data_set', 'GLOBAL_TEMP', '--smoothing', '0', '--nb_classes', '0', '--mixup', '0', '--cutmix', '0'],
    ['--data_set', 'SPEECHCOMMANDS', '--color_jitter', '0', '--aa', 'None', '--data_format', 'folder'],
    ['--data_set', 'KINETICS400', '--mixup', '0', '--label_map', 'classes.txt'],
])
def test_turning_an_option_off_is_always_accepted(argv):
    main.parse_args(argv)


def test_a_missing_extra_stops_with_one_line_naming_the_pip_command(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *rest: None if name == 'lhotse'
                        else real_find_spec(name, *rest))
    message = parse_error(['--data_set', 'SPEECHCOMMANDS', '--data_path', 'unread'], capsys)
    assert message == ("error: --data_set SPEECHCOMMANDS needs the 'audio' extra (missing: lhotse); install it from "
                       "the repository's folder with: pip install \".[audio]\"")


def test_a_script_whose_extra_is_missing_exits_with_the_pip_command():
    with pytest.raises(SystemExit, match=r"tools/x.py needs the 'export' extra \(missing: no_such_module\).*"
                                         r'pip install "\.\[export\]"'):
        specs.exit_unless_installed('export', 'tools/x.py', modules=('no_such_module',))


def test_specs_name_only_real_options_and_each_extra_exists():
    parser = main.get_args_parser()
    dests = {action.dest for action in parser._actions}
    for name in specs.names():
        spec = specs.get(name)
        assert spec.name == name
        named = set(spec.defaults) | set(spec.unused) | set(specs.own_options(spec))
        assert named <= dests, f'{name}: {sorted(named - dests)} are not main.py options'
        assert not spec.extra or spec.extra in specs.EXTRA_MODULES
    pyproject = open(os.path.join(REPO_ROOT, 'pyproject.toml')).read()
    assert all(f'\n{extra} = [' in pyproject for extra in specs.EXTRA_MODULES)


def imported_modules(path):
    tree = ast.parse(open(os.path.join(REPO_ROOT, path)).read())
    return {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names} | \
        {node.module.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_dependencies_point_one_way():
    assert 'modalities' not in imported_modules('tasks.py')   # the modalities import tasks, not the reverse
    assert imported_modules('specs.py') <= {'argparse', 'importlib', 'dataclasses', 'typing'}  # readable without any extra


def test_help_says_where_per_data_set_defaults_come_from(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(['--help'])
    text = capsys.readouterr().out
    assert 'specs.py' in text and 'An option you do not set takes' in text
    assert '--data_set SPEECHCOMMANDS (extra: audio)\n  recipe: --nb_classes 35' in text


@pytest.mark.slow
def test_plain_digits_command_trains_and_evaluates(tmp_path):
    """`main.py --data_set DIGITS` with only a tiny model and CPU sizes: the recipe's input size and class count."""
    output_dir = str(tmp_path / 'run')
    stdout = run_plain_command('DIGITS', str(tmp_path), [], str(tmp_path / 'run'))
    assert '"input_size": 32' in stdout and '"nb_classes": 10' in stdout


def test_training_docs_list_every_recipe_default():
    """docs/training.md's table of per-data-set defaults names each option a spec sets."""
    lines = open(os.path.join(REPO_ROOT, 'docs', 'training.md')).read().splitlines()
    for name in specs.names():
        row = next(line for line in lines if line.startswith('| ') and f'`{name}`' in line.split('|')[1])
        missing = [option for option in specs.get(name).defaults if f'`{option} ' not in row]
        assert not missing, f'docs/training.md: the {name} row lacks {missing}'
