"""Write a small ModelNet-40-style data set (both layouts) from mesh files: one class per mesh, each sample a
different uniform sampling of the mesh's surface (trimesh). It feeds the point-cloud quickstart and tests without
downloading ModelNet-40.

    .venv/bin/python tools/make_modelnet_from_meshes.py --meshes data/libcgal-demo/data/meshes --out data/modelnet_cgal
    -> data/modelnet_cgal/text  (modelnet40_normal_resampled layout: x,y,z,nx,ny,nz text files and the lists)
       data/modelnet_cgal/hdf5  (modelnet40_ply_hdf5_2048 layout: shape_names.txt, ply_data_{train0,train1,test0}.h5)

The meshes of Debian's libcgal-demo (see README "Point clouds") are the default classes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('points', 'tools/make_modelnet_from_meshes.py')

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import trimesh  # noqa: E402

DEFAULT_MESHES = ('anchor', 'cactus', 'knot1', 'rotor')
TEXT_DECIMALS = 6   # the text layout's precision; samples are rounded to it so both layouts hold equal values


def sample_surface(mesh, count, seed):
    """(count, 6) float32 x,y,z,nx,ny,nz uniformly on the mesh surface, rounded to TEXT_DECIMALS."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.round(np.hstack([points, mesh.face_normals[faces]]), TEXT_DECIMALS).astype(np.float32)


def make_samples(meshes, per_class, points, extra_test=0):
    """{split: [(label, (points, 6) array)]}: per_class = {'train': n, 'test': m} samplings of every mesh, interleaved
    by class; `extra_test` more test samples of the first mesh (uneven class sizes)."""
    samples = {split: [(label, sample_surface(mesh, points, seed=100000 * offset + len(meshes) * index + label))
                       for index in range(count) for label, mesh in enumerate(meshes)]
               for offset, (split, count) in enumerate(per_class.items(), start=1)}
    samples['test'] += [(0, sample_surface(meshes[0], points, seed=900000 + index)) for index in range(extra_test)]
    return samples


def write_text_layout(root, class_names, samples):
    """modelnet40_normal_resampled layout: shape lists and <class>/<class>_NNNN.txt (ids unique over splits)."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'modelnet40_shape_names.txt'), 'w') as f:
        f.write('\n'.join(class_names) + '\n')
    number = 0
    for split, items in samples.items():
        shape_ids = []
        for label, points in items:
            shape_id = f'{class_names[label]}_{number:04d}'
            os.makedirs(os.path.join(root, class_names[label]), exist_ok=True)
            np.savetxt(os.path.join(root, class_names[label], f'{shape_id}.txt'), points,
                       fmt=f'%.{TEXT_DECIMALS}f', delimiter=',')
            shape_ids.append(shape_id)
            number += 1
        with open(os.path.join(root, f'modelnet40_{split}.txt'), 'w') as f:
            f.write('\n'.join(shape_ids) + '\n')
    return root


def write_hdf5_layout(root, class_names, samples):
    """modelnet40_ply_hdf5_2048 layout of the same samples (xyz only); the training split over two files."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'shape_names.txt'), 'w') as f:
        f.write('\n'.join(class_names) + '\n')
    for split, items in samples.items():
        for part, indices in enumerate(np.array_split(np.arange(len(items)), 2 if split == 'train' else 1)):
            with h5py.File(os.path.join(root, f'ply_data_{split}{part}.h5'), 'w') as f:
                f['data'] = np.stack([items[i][1][:, :3] for i in indices])
                f['label'] = np.array([[items[i][0]] for i in indices], dtype=np.uint8)
    return root


def load_meshes(mesh_dir, names):
    paths = [os.path.join(mesh_dir, f'{name}.off') for name in names]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f'mesh file(s) not found: {missing}; see README "Point clouds" for unpacking '
                                "libcgal-demo's meshes")
    return [trimesh.load(path, force='mesh') for path in paths]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--meshes', default='data/libcgal-demo/data/meshes', help='folder of <name>.off meshes')
    parser.add_argument('--classes', default=','.join(DEFAULT_MESHES), help='comma-separated mesh names (classes)')
    parser.add_argument('--out', required=True, help='output folder (gets text/ and hdf5/)')
    parser.add_argument('--train_per_class', type=int, default=40)
    parser.add_argument('--test_per_class', type=int, default=10)
    parser.add_argument('--points', type=int, default=1024, help='points per sample')
    args = parser.parse_args(argv)
    names = args.classes.split(',')
    samples = make_samples(load_meshes(args.meshes, names),
                           {'train': args.train_per_class, 'test': args.test_per_class}, args.points)
    print(write_text_layout(os.path.join(args.out, 'text'), names, samples))
    print(write_hdf5_layout(os.path.join(args.out, 'hdf5'), names, samples))


if __name__ == '__main__':
    main()
