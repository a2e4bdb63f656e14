"""Point clouds (modalities/point_cloud.py): ModelNet-40 reading in both layouts, farthest-point sampling, the splat,
the adapter around UniRepLKNet, and training through main.py on real meshes.

The meshes are the OFF models of Debian's libcgal-demo (`data.tar.gz`), which `.ci/run` unpacks into
data/libcgal-demo/data/meshes (or set CGAL_MESH_DIR); the tests that need them skip with the reason when they are
missing. By hand:
    apt-get download libcgal-demo && dpkg-deb -x libcgal-demo_*.deb pkg &&
    mkdir -p data/libcgal-demo && tar -xzf pkg/usr/share/doc/libcgal-dev/data.tar.gz -C data/libcgal-demo data/meshes
"""
import os
import re

import h5py
import numpy as np
import pytest
import torch

import datasets
import engine
import main as train_main
from conftest import skip_unless_ci
from modalities import point_cloud
from tools import make_modelnet_from_meshes
from train_helpers import (REPO_ROOT, TINY_UNIREPLKNET, assert_bitwise_equal,
                           assert_layer_decay_and_sync_bn_reach_the_backbone_inside, assert_optimizer_states_equal,
                           assert_succeeded, load_checkpoint, randomise_batch_norms, read_log, run_killed_after_each,
                           run_main, run_plain_command)

pytestmark = pytest.mark.usefixtures('single_thread')

MESH_DIR = os.environ.get('CGAL_MESH_DIR', os.path.join(REPO_ROOT, 'data', 'libcgal-demo', 'data', 'meshes'))
# Four shapes that differ in outline: each is one class; samples are different surface samplings of it.
MESHES = make_modelnet_from_meshes.DEFAULT_MESHES
RAW_POINTS = 400
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 5
# Tiny sizes: 128 points, a 32x32 grid, 16-d point features, the tiny backbone of the training tests.
TINY_ARGS = ['--model', 'unireplknet_a', '--model_overrides', TINY_UNIREPLKNET, '--data_set', 'MODELNET40',
             '--input_size', '32', '--pc_points', '128', '--pc_fps_points', '160', '--pc_knn', '16',
             '--pc_encoder_dim', '16', '--pc_fusion_dim', '16', '--mixup', '0', '--cutmix', '0', '--smoothing', '0.2',
             '--opt', 'adamw', '--weight_decay', '0.05', '--warmup_epochs', '0', '--device', 'cpu',
             '--num_workers', '0', '--seed', '0']


@pytest.fixture(scope='module')
def modelnet(tmp_path_factory):
    """Both ModelNet-40 layouts of the same real-mesh samples: {'text': dir, 'hdf5': dir}."""
    if not all(os.path.isfile(os.path.join(MESH_DIR, f'{name}.off')) for name in MESHES):
        skip_unless_ci(f'libcgal-demo meshes missing in {MESH_DIR}; .ci/run unpacks them (see this module docstring)')
    samples = make_modelnet_from_meshes.make_samples(
        make_modelnet_from_meshes.load_meshes(MESH_DIR, MESHES), {'train': TRAIN_PER_CLASS, 'test': TEST_PER_CLASS},
        RAW_POINTS, extra_test=1)   # 21 test samples: uneven over 2 ranks and over the classes
    base = tmp_path_factory.mktemp('modelnet')
    return {'text': make_modelnet_from_meshes.write_text_layout(str(base / 'text'), MESHES, samples),
            'hdf5': make_modelnet_from_meshes.write_hdf5_layout(str(base / 'hdf5'), MESHES, samples)}


def tiny_args(data_path, *extra):
    return train_main.parse_args([*TINY_ARGS, '--data_path', data_path, *extra])


# ----------------------------------------------------------------------------------------------
# Sampling and splat against references
# ----------------------------------------------------------------------------------------------

def brute_force_farthest_points(points, count, start):
    """The definition: each next point maximises its distance to the nearest point chosen so far."""
    chosen = [start]
    for _ in range(count - 1):
        distances = [min(float(((points[i] - points[j]) ** 2).sum()) for j in chosen) for i in range(len(points))]
        chosen.append(int(np.argmax(distances)))
    return chosen


def test_farthest_point_sample_matches_brute_force():
    points = torch.rand(3, 60, 3, dtype=torch.float64)
    indices = point_cloud.farthest_point_sample(points, 20, start=7)
    for cloud, chosen in zip(points, indices):
        assert chosen.tolist() == brute_force_farthest_points(cloud.numpy(), 20, start=7)
    unbatched = point_cloud.farthest_point_sample(points[0], 20, start=7)
    assert torch.equal(unbatched, indices[0])


def test_splat_matches_dense_reference():
    grid = 16
    points = torch.randn(2, 50, 3, dtype=torch.float64)
    features = torch.randn(2, 50, 5, dtype=torch.float64)
    indices = point_cloud.splat_indices(points, grid)
    assert indices.min() >= 0 and indices.max() < grid * grid
    image = point_cloud.splat(features, indices, grid)
    # Dense reference: one-hot cell membership of each (point, patch cell) times the point's features.
    membership = torch.nn.functional.one_hot(indices.view(2, 50, 9), grid * grid).double().sum(dim=2)  # B N G
    reference = torch.einsum('bng,bnc->bcg', membership, features).view(2, 5, grid, grid)
    torch.testing.assert_close(image, reference, rtol=0, atol=1e-12)
    # Each point's 3x3 patch is centred on its cell: the cell of point 0 holds its features (plus neighbours').
    rows, cols = indices[0, 4] // grid, indices[0, 4] % grid
    assert (indices[0, :9] // grid).tolist() == [rows - 1] * 3 + [rows] * 3 + [rows + 1] * 3
    assert (indices[0, :9] % grid).tolist() == [cols - 1, cols, cols + 1] * 3


def test_mean_class_accuracy_weights_every_class_equally():
    """Class 0: 3 of 3 right; class 1: 0 of 1; class 2 absent: overall 75%, mean class accuracy 50%."""
    targets = torch.tensor([0, 0, 0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1), targets), batch_size=3)
    stats = engine.evaluate(loader, AlwaysClassZero(), torch.device('cpu'), engine.Precision('cpu', False))
    assert stats['acc1'] == 75.0 and stats['mean_class_acc'] == 50.0


class PointProbe(torch.nn.Module):
    """A stand-in classifier of (B, 2, N, 3) samples whose answer depends on the rotation of the placed points."""

    def __init__(self, classes):
        super().__init__()
        self.linear = torch.nn.Linear(8 * 3, classes)

    def forward(self, samples):
        return self.linear(samples[:, 0, :8].flatten(1))  # the first 8 placed points


@pytest.mark.parametrize('score', ['per_rotation', 'ensemble'])
def test_reported_accuracy_is_the_releases_per_rotation_mean(modelnet, score):
    """Point/tool/train_adaptor_lkv.py validate_cls: each of the 8 rotations predicted alone, accuracy over all
    (shape, rotation) pairs = the mean of the 8 per-rotation accuracies; the ensemble (mean probability) logged beside
    it. Computed directly from the data set's samples and compared with engine.evaluate (2 shapes per batch)."""
    dataset, classes = point_cloud.build_dataset(False, tiny_args(modelnet['hdf5'], '--pc_test_score', score))
    torch.manual_seed(0)
    model = PointProbe(classes).eval()
    samples, targets = zip(*[dataset[index] for index in range(len(dataset))])
    targets = torch.tensor(targets)
    with torch.no_grad():
        logits = torch.stack([model(sample) for sample in samples])  # (shapes, rotations, classes)
    per_rotation = [(logits[:, r].argmax(1) == targets).double().mean().item() * 100 for r in range(8)]
    ensemble = (logits.softmax(-1).mean(1).argmax(1) == targets).double().mean().item() * 100
    assert len(set(per_rotation)) > 1 and np.mean(per_rotation) != ensemble  # the two protocols differ here
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    stats = engine.evaluate(loader, model, torch.device('cpu'), engine.Precision('cpu', False))
    assert stats['acc1_per_view'] == pytest.approx(np.mean(per_rotation), abs=1e-9)
    assert stats['acc1_ensemble'] == pytest.approx(ensemble, abs=1e-9)
    assert stats['acc1'] == stats['acc1_per_view' if score == 'per_rotation' else 'acc1_ensemble']
    assert stats['num_images'] == len(dataset)


def test_recipe_evaluates_on_the_releases_schedule():
    """Point/tool/train_adaptor_lkv.py: with epoch_log = epoch + 1, evaluate if (epoch_log % eval_freq == 0 and
    val_epoch <= epoch_log < epochs - last_epochs) or epoch_log >= epochs - last_epochs (config: 5, 100, 30)."""
    args = train_main.parse_args(['--config', os.path.join(REPO_ROOT, 'configs', 'point_cloud',
                                                           'unireplknet_s_modelnet40.yaml')])
    ours = [epoch for epoch in range(args.epochs) if train_main.evaluates_after(epoch, args)]
    release = [epoch for epoch in range(300) if ((epoch + 1) % 5 == 0 and 100 <= epoch + 1 < 270) or epoch + 1 >= 270]
    assert ours == release and len(ours) == 65
    every_epoch = train_main.parse_args([])
    assert all(train_main.evaluates_after(epoch, every_epoch) for epoch in range(every_epoch.epochs))


class AlwaysClassZero(torch.nn.Module):
    def forward(self, samples):
        return torch.tensor([[1.0, 0.0, 0.0]]).expand(len(samples), -1)


def test_rotations_are_the_releases():
    """View i: Euler (x, y, z) = (i pi/2, 0, pi/2), R = Rx Ry Rz; augmentation: -azimuth about z after -elevation
    about (sin a, -cos a, 0) (the release's euler2mat and rotate_theta_phi, written out)."""
    def about_x(a):
        return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])

    def about_z(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    for i, view in enumerate(point_cloud.view_rotations(4)):
        np.testing.assert_allclose(view.numpy(), about_x(i * np.pi / 2) @ about_z(np.pi / 2), atol=1e-6)
    np.testing.assert_allclose(point_cloud.view_rotation(0.7, 0.0).numpy(), about_z(-0.7), atol=1e-6)
    # The tilt axis (sin a, -cos a, 0) stays put under the tilt, then turns by -a about z onto (0, -1, 0); the z axis
    # tilts by the elevation angle.
    rotation = point_cloud.view_rotation(0.7, -0.35 * np.pi).numpy()
    np.testing.assert_allclose(rotation @ np.array([np.sin(0.7), -np.cos(0.7), 0.0]), [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose((rotation @ np.array([0.0, 0.0, 1.0]))[2], np.cos(0.35 * np.pi), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Data reading and bad input
# ----------------------------------------------------------------------------------------------

def test_both_layouts_give_the_same_samples(modelnet):
    for is_train in (False, True):
        text_set, classes = point_cloud.build_dataset(is_train, tiny_args(modelnet['text']))
        hdf5_set, hdf5_classes = point_cloud.build_dataset(is_train, tiny_args(modelnet['hdf5']))
        assert classes == hdf5_classes == len(MESHES)
        assert len(text_set) == len(hdf5_set) == (len(MESHES) * TRAIN_PER_CLASS if is_train else 21)
        torch.manual_seed(3), np.random.seed(3)
        text_points, text_label = text_set[5]
        torch.manual_seed(3), np.random.seed(3)
        hdf5_points, hdf5_label = hdf5_set[5]
        assert text_label == hdf5_label == 5 % len(MESHES)
        assert torch.equal(text_points, hdf5_points)
        assert text_points.shape == ((2, 128, 3) if is_train else (8, 2, 128, 3))


def test_training_augmentation_is_seeded_and_test_is_fixed(modelnet):
    train_set, _ = point_cloud.build_dataset(True, tiny_args(modelnet['hdf5']))
    torch.manual_seed(1), np.random.seed(1)
    first, _ = train_set[0]
    torch.manual_seed(1), np.random.seed(1)
    again, _ = train_set[0]
    other, _ = train_set[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    placed, original = first
    assert original.norm(dim=1).max() <= 1 + 1e-5      # un-augmented: inside the unit sphere
    test_set, _ = point_cloud.build_dataset(False, tiny_args(modelnet['hdf5']))
    views = test_set[0][0]
    assert torch.equal(views, test_set[0][0])
    # Each test view is the same points under a rotation: pairwise distances are preserved.
    def pairwise_distances(points):
        return (points[:, None] - points[None]).norm(dim=-1)
    torch.testing.assert_close(pairwise_distances(views[3, 0]), pairwise_distances(views[3, 1]), atol=1e-5, rtol=0)


def test_layout_errors_name_what_is_missing(tmp_path, modelnet):
    with pytest.raises(FileNotFoundError, match='missing modelnet40_shape_names.txt, modelnet40_train.txt'):
        point_cloud.open_modelnet40(str(tmp_path), 'train')
    broken = tmp_path / 'text'
    broken.mkdir()
    for name in point_cloud.TEXT_FILES:
        (broken / name).write_text(open(os.path.join(modelnet['text'], name)).read())
    with pytest.raises(datasets.UnreadableSampleError,
                       match=r'point file\(s\) listed in .*modelnet40_train.txt are missing'):
        point_cloud.build_dataset(True, tiny_args(str(broken)))
    (tmp_path / 'h5').mkdir()
    with h5py.File(tmp_path / 'h5' / 'ply_data_train0.h5', 'w') as f:
        f['data'] = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(FileNotFoundError, match='no shape_names.txt'):
        point_cloud.open_modelnet40(str(tmp_path / 'h5'), 'train')
    (tmp_path / 'h5' / 'shape_names.txt').write_text('a\n')
    with pytest.raises(datasets.UnreadableSampleError, match="ply_data_train0.h5: has no 'label' dataset"):
        point_cloud.build_dataset(True, tiny_args(str(tmp_path / 'h5')))


def test_throughput_times_the_adapter_on_a_real_cloud(modelnet, capsys):
    """--throughput feeds the adapter one view of the first test cloud, repeated (its input is points, not images)."""
    assert train_main.main(tiny_args(modelnet['hdf5'], '--throughput', '--batch_size', '2')) > 0
    points = TINY_ARGS[TINY_ARGS.index('--pc_points') + 1]
    assert f'input (2, {points}, 3)' in capsys.readouterr().out  # [placed points, un-augmented points] of one view


def test_layer_decay_and_sync_bn_reach_the_backbone_and_the_adapter(modelnet):
    synced = assert_layer_decay_and_sync_bn_reach_the_backbone_inside(
        [*TINY_ARGS, '--data_path', modelnet['hdf5'], '--nb_classes', str(len(MESHES))])
    assert any(isinstance(module, torch.nn.SyncBatchNorm) for name, module in synced.named_modules()
               if not name.startswith('backbone.'))  # the point encoder's ResNet blocks


def test_options_the_adapter_cannot_honour_are_errors(modelnet, capsys):
    with pytest.raises(SystemExit):
        train_main.parse_args(['--data_set', 'MODELNET40', '--data_path', modelnet['hdf5'], '--mixup', '0.8'])
    assert 'does not use --mixup; drop it or pass --mixup 0.0' in capsys.readouterr().err


def test_point_file_with_wrong_columns_is_named(tmp_path):
    path = tmp_path / 'chair_0001.txt'
    path.write_text('0.1,0.2,0.3\n0.4,0.5,0.6\n')
    with pytest.raises(datasets.UnreadableSampleError,
                       match=r'chair_0001.txt: 3 comma-separated columns .* have 6 \(x,y,z,nx,ny,nz\)'):
        point_cloud.read_point_file(str(path))


def write_point_file(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(','.join(str(value) for value in row) + '\n' for row in rows))


def test_malformed_point_files_are_named_with_their_line_or_skipped_and_counted(tmp_path):
    """A row of 4 columns, an empty file and a NaN point (text layout); data of the wrong shape (HDF5 layout)."""
    rows = np.random.default_rng(0).uniform(-1, 1, (8, 6)).round(3)
    text = tmp_path / 'text'
    write_point_file(text / 'cup' / 'cup_0001.txt', rows)
    write_point_file(text / 'cup' / 'cup_0002.txt', [*rows[:2], rows[2, :4], *rows[3:]])
    write_point_file(text / 'cup' / 'cup_0003.txt', [])
    write_point_file(text / 'cup' / 'cup_0004.txt', [*rows[:5], [0.1, float('nan'), 0.2, 0, 0, 1], *rows[5:]])
    (text / 'modelnet40_shape_names.txt').write_text('cup\n')
    (text / 'modelnet40_train.txt').write_text(''.join(f'cup_000{n}\n' for n in range(1, 5)))
    (text / 'modelnet40_test.txt').write_text('cup_0001\n')
    small = ('--pc_points', '4', '--pc_fps_points', '4')
    strict, _ = point_cloud.build_dataset(True, tiny_args(str(text), *small))
    assert strict[0][0].shape == (2, 4, 3)
    with pytest.raises(datasets.UnreadableSampleError,
                       match=r"cup_0002\.txt, line 3: '[-0-9.,]+' is not 6 comma-separated numbers .*--skip_corrupt"):
        strict[1]
    with pytest.raises(datasets.UnreadableSampleError, match=r'cup_0003\.txt holds no points'):
        strict[2]
    with pytest.raises(datasets.UnreadableSampleError, match=r'cup_0004\.txt: point 5 \(0-based\) is .*not finite'):
        strict[3]
    skipping, _ = point_cloud.build_dataset(True, tiny_args(str(text), *small, '--skip_corrupt'))
    assert [skipping[index] is None for index in range(4)] == [False, True, True, True]
    assert datasets.count_skipped(skipping) == 3

    hdf5 = tmp_path / 'hdf5'
    hdf5.mkdir()
    (hdf5 / 'shape_names.txt').write_text('cup\n')
    for name, data in (('ply_data_train0.h5', np.zeros((3, 8, 3))), ('ply_data_train1.h5', np.zeros((2, 8, 2)))):
        with h5py.File(hdf5 / name, 'w') as f:
            f['data'] = data.astype(np.float32)
            f['label'] = np.zeros((len(data), 1), np.int64)
    with pytest.raises(datasets.UnreadableSampleError, match=r'ply_data_train1\.h5: data has shape \(2, 8, 2\); the '
                                                             r'HDF5 layout of ModelNet-40 has data \(N, points, 3\)'):
        point_cloud.build_dataset(True, tiny_args(str(hdf5), *small))
    skipping, _ = point_cloud.build_dataset(True, tiny_args(str(hdf5), *small, '--skip_corrupt_images', 'true'))
    assert len(skipping) == 3 and datasets.count_skipped(skipping) == 2   # the bad file's 2 samples


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def tiny_model(modelnet, *extra):
    args = tiny_args(modelnet['hdf5'], *extra)
    args.nb_classes = len(MESHES)
    return train_main.build_model(args)


def test_model_reparameterizes_and_trains_every_parameter(modelnet):
    model = tiny_model(modelnet, '--layer_scale_init_value', '1.0')  # the default 1e-6 would hide a wrong block kernel
    model.backbone.set_fast_cpu_kernels(False)  # the reference adds up the branches (the fast path uses reparam's kernel)
    randomise_batch_norms(model)
    test_set, _ = point_cloud.build_dataset(False, tiny_args(modelnet['hdf5']))
    assert test_set.eval_views == 8
    batch = torch.stack([test_set[i][0] for i in range(3)]).flatten(0, 1)      # 3 samples x 8 rotations
    model.eval()
    with torch.no_grad():
        logits = model(batch)
        assert logits.shape == (24, len(MESHES))
        deployed = train_main.inference_model(model, reparam=True)
        assert len(deployed.state_dict()) < len(model.state_dict())   # the blocks' branches were merged
        torch.testing.assert_close(deployed(batch), logits, atol=1e-4, rtol=1e-4)
    model.train()
    model.set_grad_checkpointing(True)
    assert all(block.with_cp for block in model.backbone.blocks())
    model(batch).sum().backward()
    unused = [name for name, param in model.named_parameters() if param.grad is None]
    assert not unused, f'parameters without gradient break DDP (find_unused_parameters=False): {unused}'


def test_point_encoder_sees_only_unaugmented_points(modelnet):
    """Moving the placed points changes the image; the features come from the un-augmented points only."""
    model = tiny_model(modelnet).eval()
    points = torch.randn(2, 2, 128, 3)
    shifted = points.clone()
    shifted[:, 0] = shifted[:, 0] * 2      # the grid spans the placed points' extent: same image (2x is exact)
    with torch.no_grad():
        torch.testing.assert_close(model.project(points[:, 0], points[:, 1]),
                                   model.project(shifted[:, 0], shifted[:, 1]))
        moved = points.clone()
        moved[:, 1] += torch.randn_like(moved[:, 1]) * 0.1
        assert not torch.allclose(model.project(points[:, 0], points[:, 1]), model.project(moved[:, 0], moved[:, 1]))


# ----------------------------------------------------------------------------------------------
# Training through main.py
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained_run(modelnet, tmp_path_factory):
    """8 epochs of the tiny model on the text layout (10 updates of 8 samples per epoch)."""
    output = str(tmp_path_factory.mktemp('trained') / 'run')
    assert_succeeded(run_main([*TINY_ARGS, '--data_path', modelnet['text'], '--epochs', '8', '--batch_size', '8',
                               '--lr', '2e-3', '--output_dir', output]))
    return output


@pytest.mark.slow
def test_training_beats_chance_on_held_out_samples(trained_run):
    """Held-out surface samplings of each mesh under the 8 fixed test rotations; chance is 25%."""
    final = read_log(trained_run)[-1]
    assert final['test_acc1'] >= 70.0 and final['test_mean_class_acc'] >= 70.0, final


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(trained_run, modelnet):
    """21 test samples (6 of the first class) on 2 gloo ranks: overall and mean class accuracy from summed counts
    equal the single-process evaluation of the same weights (the last epoch's log line)."""
    final = read_log(trained_run)[-1]
    checkpoint = os.path.join(trained_run, f"checkpoint-{final['epoch']}.pth")
    completed = run_main([*TINY_ARGS, '--data_path', modelnet['hdf5'], '--batch_size', '4', '--eval', 'true',
                          '--resume', checkpoint], nproc=2)
    assert_succeeded(completed)
    found = re.search(r'\* Acc@1 (\S+) Acc@5 \S+ mean class acc (\S+) loss (\S+) \((\d+) images\)', completed.stdout)
    acc1, mean_class_acc, loss, count = map(float, found.groups())
    assert count == 21
    assert acc1 == pytest.approx(final['test_acc1'], abs=1e-3)
    assert mean_class_acc == pytest.approx(final['test_mean_class_acc'], abs=1e-3)
    assert loss == pytest.approx(final['test_loss'], abs=1e-3)


@pytest.mark.slow
def test_killed_and_resumed_run_is_bitwise_equal(modelnet, tmp_path):
    """SIGKILL mid-epoch after 3 and after 14 updates (of 10 per epoch), resumed each time: the resumed run's weights and optimizer
    equal an uninterrupted run's bit for bit (point sampling, rotations, scaling and drop path all seeded)."""
    argv = [*TINY_ARGS, '--data_path', modelnet['text'], '--epochs', '2', '--batch_size', '8', '--lr', '2e-3',
            '--drop_path', '0.1', '--save_ckpt_every_steps', '1']
    uninterrupted = str(tmp_path / 'uninterrupted')
    assert_succeeded(run_main([*argv, '--output_dir', uninterrupted]))
    interrupted = str(tmp_path / 'interrupted')
    run_killed_after_each(argv, interrupted, ['checkpoint-0-step3.pth', 'checkpoint-1-step4.pth'])  # 10 steps an epoch
    expected = load_checkpoint(os.path.join(uninterrupted, 'checkpoint-1.pth'))
    resumed = load_checkpoint(os.path.join(interrupted, 'checkpoint-1.pth'))
    assert_bitwise_equal(resumed['model'], expected['model'])
    assert_optimizer_states_equal(resumed['optimizer'], expected['optimizer'])
    assert [line['test_acc1'] for line in read_log(interrupted)] == [line['test_acc1'] for line in read_log(uninterrupted)]

@pytest.mark.slow
def test_plain_command_trains_with_the_modelnet_recipe(modelnet, tmp_path):
    stdout = run_plain_command('MODELNET40', modelnet['hdf5'],
                               ['--nb_classes', str(len(MESHES)), '--input_size', '32', '--pc_points', '128',
                                '--pc_fps_points', '160', '--pc_knn', '16', '--pc_encoder_dim', '16',
                                '--pc_fusion_dim', '16', '--pc_test_rotations', '2'], str(tmp_path / 'run'))
    assert '"smoothing": 0.2' in stdout and '"mixup": 0.0' in stdout and '"lr": 0.0005' in stdout
