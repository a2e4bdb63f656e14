"""In-process tests of main.py's options, model building, samplers, checkpoint restore and input errors."""
import argparse
import shlex

import pytest
import torch
import yaml

import main
import utils
from checkpoint import CheckpointError, Checkpointer
from train_helpers import NUM_CLASSES, TINY_UNIREPLKNET, make_tiny_dataset, randomise_batch_norms, tiny_data_args

pytestmark = pytest.mark.usefixtures('single_thread')  # see tests/conftest.py

# The training README's commands (seed document), with their line continuations joined. The 22K
# commands' main.py part is what run_with_submitit.py forwards after its own options.
README_MAIN_COMMANDS = {
    'in1k_a': '--model unireplknet_a --drop_path 0.0 --batch_size 128 --lr 4e-3 --update_freq 8 '
              '--mixup 0.3 --cutmix 0.3 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in1k_f': '--model unireplknet_f --drop_path 0.0 --batch_size 128 --lr 4e-3 --update_freq 8 '
              '--mixup 0.3 --cutmix 0.3 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in1k_p': '--model unireplknet_p --drop_path 0.1 --batch_size 128 --lr 4e-3 --update_freq 8 '
              '--mixup 0.3 --cutmix 0.3 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in1k_n': '--model unireplknet_n --drop_path 0.1 --batch_size 128 --lr 4e-3 --update_freq 8 '
              '--mixup 0.5 --cutmix 0.5 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in1k_t': '--model unireplknet_t --drop_path 0.2 --batch_size 128 --lr 4e-3 --update_freq 8 '
              '--mixup 0.8 --cutmix 1.0 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in1k_s': '--model unireplknet_s --drop_path 0.4 --batch_size 64 --lr 4e-3 --update_freq 8 '
              '--mixup 0.8 --cutmix 1.0 --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'in22k_s': '--model unireplknet_s --drop_path 0.1 --batch_size 32 --lr 4e-3 --update_freq 8 '
               '--warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true '
               '--data_path /path/to/imagenet-1k',
    'in22k_b': '--model unireplknet_b --drop_path 0.1 --batch_size 32 --lr 4e-3 --update_freq 8 '
               '--warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true '
               '--data_path /path/to/imagenet-1k',
    'in22k_l': '--model unireplknet_l --drop_path 0.1 --batch_size 64 --lr 1e-3 --update_freq 4 --input_size 192 '
               '--warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true '
               '--data_path /path/to/imagenet-1k',
    'in22k_xl': '--model unireplknet_xl --drop_path 0.2 --batch_size 32 --lr 1e-3 --update_freq 4 --input_size 192 '
                '--warmup_epochs 5 --epochs 90 --data_set image_folder --nb_classes 21841 --disable_eval true '
                '--data_path /path/to/imagenet-1k',
    'ft_s': '--model unireplknet_s --drop_path 0.2 --input_size 384 --batch_size 64 --lr 5e-5 --update_freq 2 '
            '--warmup_epochs 0 --epochs 30 --weight_decay 1e-8 --layer_decay 0.8 --head_init_scale 0.001 '
            '--cutmix 0 --mixup 0 --finetune /path/to/checkpoint.pth --data_path /path/to/imagenet-1k '
            '--output_dir /path/to/save_results',
    'ft_b': '--model unireplknet_b --drop_path 0.2 --input_size 384 --batch_size 64 --lr 5e-5 --update_freq 2 '
            '--warmup_epochs 0 --epochs 30 --weight_decay 1e-8 --layer_decay 0.8 --head_init_scale 0.001 '
            '--cutmix 0 --mixup 0 --finetune /path/to/checkpoint.pth --data_path /path/to/imagenet-1k '
            '--output_dir /path/to/save_results',
    'ft_l': '--model unireplknet_l --drop_path 0.3 --input_size 384 --batch_size 64 --lr 5e-5 --update_freq 2 '
            '--model_ema true --model_ema_eval true --warmup_epochs 0 --epochs 20 --weight_decay 1e-8 '
            '--smoothing 0.3 --layer_decay 0.8 --head_init_scale 0.001 --cutmix 0 --mixup 0 '
            '--finetune /path/to/checkpoint.pth --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'ft_xl': '--model unireplknet_xl --drop_path 0.3 --input_size 384 --batch_size 32 --lr 5e-5 --update_freq 2 '
             '--model_ema true --model_ema_eval true --warmup_epochs 0 --epochs 20 --weight_decay 1e-8 '
             '--smoothing 0.3 --layer_decay 0.8 --head_init_scale 0.001 --cutmix 0 --mixup 0 '
             '--finetune /path/to/checkpoint.pth --data_path /path/to/imagenet-1k --output_dir /path/to/save_results',
    'oom_hint': '--model unireplknet_b --use_checkpoint true --data_path /path/to/imagenet-1k',
    'eval_example': '--model unireplknet_b --eval true --resume /path/ckpt.pth --input_size 384 '
                    '--data_path /path/to/imagenet-1k',
}


@pytest.mark.parametrize('name', sorted(README_MAIN_COMMANDS))
def test_readme_command_parses_with_documented_values(name):
    argv = shlex.split(README_MAIN_COMMANDS[name])
    args = main.parse_args(argv)
    # Every flag given on the command line arrives with the value written there.
    for flag, value in zip(argv[::2], argv[1::2]):
        parsed = getattr(args, flag[2:])
        expected = main.str2bool(value) if isinstance(parsed, bool) else type(parsed)(value)
        assert parsed == expected, flag
    main.canonical_model_name(args.model)  # a registered model


def test_defaults_match_the_original_release():
    args = main.parse_args([])
    expected = dict(batch_size=64, epochs=300, update_freq=1, drop_path=0, input_size=224,
                    layer_scale_init_value=1e-6, model_ema=False, model_ema_decay=0.9999, opt='adamw',
                    opt_eps=1e-8, opt_betas=None, clip_grad=None, momentum=0.9, weight_decay=0.05,
                    weight_decay_end=None, lr=4e-3, layer_decay=1.0, min_lr=1e-6, warmup_epochs=20,
                    warmup_steps=-1, color_jitter=0.4, aa='rand-m9-mstd0.5-inc1', smoothing=0.1,
                    train_interpolation='bicubic', crop_pct=None, reprob=0.25, remode='pixel', recount=1,
                    mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch',
                    finetune='', head_init_scale=1.0, model_key='model|module', model_prefix='',
                    nb_classes=1000, imagenet_default_mean_and_std=True, data_set='IMNET', output_dir='',
                    device='cuda', seed=0, resume='', auto_resume=True, save_ckpt=True, save_ckpt_freq=1,
                    save_ckpt_num=3, start_epoch=0, eval=False, dist_eval=True, disable_eval=False,
                    num_workers=10, pin_mem=True, world_size=None, local_rank=-1, dist_on_itp=False,
                    dist_url='env://', use_amp=False, enable_wandb=False, wandb_ckpt=False,
                    use_checkpoint=False, amp_dtype='float16', channels_last=False, sync_bn=False,
                    reparam=False, throughput=False, save_ckpt_every_steps=0, skip_corrupt_images=False)
    for name, value in expected.items():
        assert getattr(args, name) == value, name


def test_defaults_that_differ_from_the_release_work_here():
    """The release defaulted to convnext_tiny (not a model of this code), a cluster path and its own project."""
    args = main.parse_args([])
    assert main.canonical_model_name(args.model) == 'unireplknet_a'
    assert args.data_path is None and args.project == 'unireplknet'


def test_unknown_model_is_rejected_before_any_data_is_read(monkeypatch):
    def read_data(*args, **kwargs):
        raise AssertionError('data read before the model name was checked')

    monkeypatch.setattr(main, 'build_dataset', read_data)
    args = main.parse_args(['--model', 'convnext_tiny', '--device', 'cpu', '--data_set', 'DIGITS'])
    with pytest.raises(ValueError, match="unknown --model 'convnext_tiny'"):
        main.main(args)


def test_data_set_needing_a_path_without_data_path_is_a_clear_error():
    args = main.parse_args(['--device', 'cpu', '--data_set', 'IMNET'])
    with pytest.raises(ValueError, match='--data_set IMNET reads its images from --data_path, which is not set'):
        main.main(args)


def test_launcher_local_rank_spellings():
    assert main.parse_args(['--local_rank=3']).local_rank == 3
    assert main.parse_args(['--local-rank=2']).local_rank == 2
    assert main.parse_args(['--reparam']).reparam is True
    assert main.parse_args(['--reparam', 'false']).reparam is False


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(f'--{action.dest}' in text for action in main.get_args_parser()._actions)


def test_slurm_task_without_a_world_size_runs_alone(monkeypatch):
    """A plain `python main.py` inside an sbatch script (SLURM_PROCID=0) must not wait for other ranks;
    launchers that want a group set args.world_size (or RANK/WORLD_SIZE)."""
    for name in ('RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '0')
    args = main.parse_args(['--device', 'cpu'])
    utils.init_distributed_mode(args)
    assert args.distributed is False and args.world_size == 1


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    config = tmp_path / 'run.yaml'
    config.write_text(yaml.safe_dump({'lr': '4e-3', 'batch_size': 32, 'model_ema': True, 'opt': 'lamb',
                                      'opt_betas': [0.9, 0.99]}))
    args = main.parse_args(['--config', str(config), '--batch_size', '16'])
    assert args.lr == 4e-3 and isinstance(args.lr, float)  # YAML reads 4e-3 as a string
    assert args.batch_size == 16 and args.model_ema is True and args.opt == 'lamb'
    assert args.opt_betas == [0.9, 0.99]


def test_config_file_with_unknown_key_is_rejected(tmp_path, capsys):
    config = tmp_path / 'bad.yaml'
    config.write_text('learning_rate: 0.1\n')
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(['--config', str(config)])
    assert exit_info.value.code != 0
    assert 'unknown key(s) learning_rate' in capsys.readouterr().err


def test_model_overrides_reach_the_constructor():
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--nb_classes', '3',
                            '--use_checkpoint', 'true', '--head_init_scale', '0.001', '--drop_path', '0.1'])
    model = main.build_model(args)
    assert model.head.out_features == 3 and model.dims == (8, 16, 24, 32)
    assert all(block.with_cp for stage in model.stages for block in stage)
    assert model.head.weight.abs().max() < 0.001 * 0.05  # trunc-normal(0.02) weights scaled by 0.001


def test_unknown_model_lists_the_valid_names():
    args = main.parse_args(['--model', 'convnext_tiny'])
    with pytest.raises(ValueError, match='unireplknet_a.*RepLKNet-31B'):
        main.build_model(args)


def test_replknet_names_and_aliases_build():
    assert main.canonical_model_name('RepLKNet-31B') == 'replknet_31b'
    assert main.canonical_model_name('replknet_xl') == 'replknet_xl'


def test_reparameterised_evaluation_model_matches():
    # Layer scale 1 (the default 1e-6 would hide a wrong block kernel); BN with non-trivial statistics.
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--nb_classes', '3',
                            '--layer_scale_init_value', '1.0'])
    model = randomise_batch_norms(main.build_model(args)).eval()
    reparameterized = main.inference_model(model, reparam=True)
    # The reference adds up the branches: the fast path's eval-mode DRB runs get_kernel_bias(), as reparam does.
    model.set_fast_cpu_kernels(False)
    images = torch.randn(4, 3, 32, 32)
    assert not any('bn' in key or 'norm.running' in key for key in reparameterized.state_dict())
    # Compared before the head (a tiny head would shrink any difference), relative to the features' size: float32
    # rounding of a re-associated sum is ~1e-7 of it.
    expected = model.forward_features(images)
    assert (reparameterized.forward_features(images) - expected).abs().max() <= 1e-5 * expected.abs().max()
    torch.testing.assert_close(reparameterized(images), model(images))
    assert any('dil_bn' in key for key in model.state_dict())  # the original is left untouched


def test_throughput_mode_prints_images_per_second(capsys):
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--nb_classes', '3',
                            '--throughput', '--reparam', '--batch_size', '2', '--input_size', '32',
                            '--device', 'cpu'])
    throughput = main.main(args)
    assert throughput > 0
    assert 'img/s' in capsys.readouterr().out


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    args = main.parse_args(['--model', 'unireplknet_a', '--data_set', 'DIGITS'])
    with pytest.raises(RuntimeError, match='pass --device cpu'):
        main.main(args)


# ---------------------------------------------------------------- data errors

@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp('data')))


def test_missing_data_path_names_the_expected_folder(tmp_path):
    args = main.parse_args(['--model', 'unireplknet_a', '--device', 'cpu', '--data_path', str(tmp_path / 'none')])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none' / 'train')):
        main.main(args)


def test_wrong_nb_classes_names_the_right_number(tiny_data):
    train, val = tiny_data
    argv = tiny_data_args(train, val)
    argv[argv.index('--nb_classes') + 1] = '1000'
    args = main.parse_args(['--model', 'unireplknet_a', *argv])
    with pytest.raises(ValueError, match=f'Pass --nb_classes {NUM_CLASSES}'):
        main.main(args)


def test_sync_bn_on_cpu_processes_is_refused():
    args = argparse.Namespace(sync_bn=True, distributed=True, update_freq=1, eval=False, disable_eval=False)
    with pytest.raises(ValueError, match='--sync_bn true needs CUDA'):
        main.check_options(args, torch.device('cpu'))


# ---------------------------------------------------------------- samplers

def test_train_sampler_skips_consumed_samples_without_fetching_them():
    dataset = list(range(23))
    full = utils.ResumableTrainSampler(dataset, num_replicas=2, rank=1, seed=5, samples_per_epoch=8)
    full.set_epoch(3)
    resumed = utils.ResumableTrainSampler(dataset, num_replicas=2, rank=1, seed=5, samples_per_epoch=8)
    resumed.set_epoch(3, start_sample=6)
    assert len(full) == 8 and list(resumed) == list(full)[6:] and len(resumed) == 2
    reference = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=5)
    reference.set_epoch(3)
    assert list(full) == list(reference)[:8]


def test_eval_sampler_covers_every_sample_once():
    dataset = list(range(21))
    parts = [list(utils.UnpaddedDistributedSampler(dataset, num_replicas=2, rank=rank)) for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == dataset


# ---------------------------------------------------------------- checkpoint files

def tiny_model(nb_classes=NUM_CLASSES, overrides=TINY_UNIREPLKNET):
    return main.build_model(main.parse_args(['--model', 'unireplknet_a', '--model_overrides', overrides,
                                             '--nb_classes', str(nb_classes)]))


def test_resume_from_a_truncated_checkpoint_stops_before_training(tiny_data, tmp_path):
    path = tmp_path / 'checkpoint-0.pth'
    path.write_bytes(b'PK\x03\x04 this is not a whole checkpoint')
    args = main.parse_args(['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET,
                            *tiny_data_args(*tiny_data), '--resume', str(path), '--eval', 'true'])
    with pytest.raises(CheckpointError, match=f'{path} is truncated or corrupt'):
        main.main(args)


def test_finetune_drops_a_head_of_another_size(tmp_path):
    pretrained = tiny_model(nb_classes=7)
    path = tmp_path / 'in22k.pth'
    torch.save({'model': pretrained.state_dict()}, path)
    args = main.parse_args(['--finetune', str(path)])
    model = tiny_model()
    head_before = model.head.weight.clone()
    main.load_finetune_weights(args, model)
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.stages[1][0].pwconv1[1].weight, pretrained.stages[1][0].pwconv1[1].weight)
    # A bare state_dict (no 'model' key) with a prefix is loaded too.
    torch.save({f'backbone.{k}': v for k, v in pretrained.state_dict().items()}, path)
    args = main.parse_args(['--finetune', str(path), '--model_prefix', 'backbone.'])
    model = tiny_model()
    main.load_finetune_weights(args, model)
    assert torch.equal(model.stages[1][0].pwconv1[1].weight, pretrained.stages[1][0].pwconv1[1].weight)
    # Without the prefix nothing matches: an error rather than a silently untouched model.
    args = main.parse_args(['--finetune', str(path)])
    with pytest.raises(CheckpointError, match='--model_prefix'):
        main.load_finetune_weights(args, tiny_model())


def test_evaluation_resume_restores_the_ema_weights(tmp_path):
    """--eval --resume with --model_ema: the EMA evaluated is the checkpoint's, not a fresh copy."""
    from timm.utils import ModelEmaV3
    saved_model, saved_ema = tiny_model(), tiny_model()
    path = tmp_path / 'checkpoint-3.pth'
    torch.save({'model': saved_model.state_dict(), 'model_ema': saved_ema.state_dict()}, path)
    model = tiny_model()
    model_ema = ModelEmaV3(model)
    args = main.parse_args(['--eval', 'true'])
    checkpointer = Checkpointer(args, model, optimizer=None, precision=None, model_ema=model_ema,
                                     steps_per_epoch=0)
    assert checkpointer.restore(str(path), weights_only=True) == (0, 0)
    assert torch.equal(model.head.weight, saved_model.head.weight)
    assert torch.equal(model_ema.module.head.weight, saved_ema.head.weight)
