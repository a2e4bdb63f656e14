"""Your own scans as class folders, for `--data_set point_folder` (as `image_folder` is for images):

    <data_path>/train/<class>/*.txt|*.npy|*.ply      training
    <data_path>/val/<class>/*.txt|*.npy|*.ply        evaluation (while training and with --eval true)

A file holds one point cloud with x, y, z first: a text file of rows (comma- or whitespace-separated; further
columns such as normals or colours are ignored), a .npy array (points, >= 3) or a PLY file (its vertices, read by
trimesh). Class i is the i-th of the sorted folder names of train/; --nb_classes must equal their number. The samples
then go through the ModelNet-40 recipe of modalities/point_cloud.py (normalisation, farthest-point sampling,
--pc_points, the release's training augmentation seeded per sample, --pc_test_rotations views averaged in
evaluation, scored as --pc_test_score says) into the same P2P projection model. An unreadable file is an error
naming it, or with --skip_corrupt true skipped and counted.
"""
import numpy as np

import datasets
import specs
from modalities import point_cloud

POINT_EXTENSIONS = ('.txt', '.npy', '.ply')


def read_points(path):
    """(N, 3) float32 x, y, z of a point file; datasets.UnreadableSampleError naming the file when it cannot be
    read."""
    try:
        if path.lower().endswith('.ply'):
            import trimesh  # only PLY files need it
            points = np.asarray(trimesh.load(path, process=False).vertices)
        elif path.lower().endswith('.npy'):
            points = np.load(path, allow_pickle=False)
        else:
            with open(path) as f:
                first_line = f.readline()
            points = np.loadtxt(path, delimiter=',' if ',' in first_line else None, ndmin=2)
    except (OSError, ValueError, AttributeError) as error:
        raise datasets.UnreadableSampleError(
            f"Cannot read point file '{path}' ({type(error).__name__}: {error}). Replace or delete the file, or pass "
            '--skip_corrupt true to skip unreadable files.') from error
    if points.ndim != 2 or points.shape[1] < 3 or not len(points):
        raise datasets.UnreadableSampleError(
            f"Point file '{path}' holds an array of shape {points.shape}; expected (points, 3 or more columns) with "
            'x, y, z first. Fix or delete the file, or pass --skip_corrupt true to skip unreadable files.')
    return points[:, :3].astype(np.float32)


class PointFiles(point_cloud.ModelNet40Text):
    """A point_cloud.ModelNet40 reader of files listed as [(path, label)] (tools/predict.py uses label -1), in any
    of the formats read_points reads; a file that cannot be read is found when it is read (`unreadable` lists
    nothing up front). Its length and `source` are ModelNet40Text's."""
    unreadable = ()

    def __init__(self, samples, classes):  # ModelNet40Text's own reads the shape lists of its layout
        self.items, self.classes = samples, classes

    def __getitem__(self, index):
        path, label = self.items[index]
        return read_points(path), label


def point_files_dataset(samples, classes, is_train, args):
    """ModelNet40's samples (normalisation, sampling, augmentation or test rotations) of the listed files."""
    return point_cloud.point_cloud_dataset(PointFiles(samples, classes), is_train, args)


def build_dataset(is_train, args):
    samples, classes = datasets.class_folder_split(args, is_train, POINT_EXTENSIONS)
    return point_files_dataset(samples, classes, is_train, args), len(classes)


# The ModelNet-40 recipe and model (modalities/point_cloud.py's spec) on class folders: the same defaults but the
# class count (the folders say it), the same unused options, and all of MODELNET40's own --pc_* options.
_MODELNET = point_cloud.SPECS['MODELNET40']
SPECS = {'point_folder': specs.DataSetSpec(
    'point_folder', build_dataset, extra='points',
    defaults={option: value for option, value in _MODELNET.defaults.items() if option != 'nb_classes'},
    unused=_MODELNET.unused, options=tuple(specs.own_options(_MODELNET)),
    backbone_kwargs=_MODELNET.backbone_kwargs, build_model=_MODELNET.build_model, mixup=False,
    backbone_prefix=_MODELNET.backbone_prefix, eval_views=_MODELNET.eval_views, image_input=False)}
