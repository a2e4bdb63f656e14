"""Plot training curves from main.py's log.txt (one JSON object per epoch) to a PNG.

    python tools/plot_log.py /path/to/output_dir/log.txt --out curves.png
    python tools/plot_log.py run_a/ run_b/ --keys train_loss test_acc1 train_lr --out compare.png

Each key gets its own panel (x axis: `epoch`); several logs are drawn as several lines, labelled
by their folder name. A folder argument means <folder>/log.txt. Keys missing from a log are
skipped for that log; a key missing from every log is an error that lists the keys present.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import specs  # noqa: E402

# A missing extra stops here with the pip command, before its packages are imported.
specs.exit_unless_installed('analysis', 'tools/plot_log.py', modules=('matplotlib',))

import matplotlib  # noqa: E402

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_KEYS = ('train_loss', 'test_loss', 'test_acc1', 'train_lr')


def read_log(path):
    """The JSON records of a log.txt, in file order."""
    if os.path.isdir(path):
        path = os.path.join(path, 'log.txt')
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No log file at '{path}' (main.py writes <output_dir>/log.txt).")
    records = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_number} is not JSON ({err}).") from err
    return path, records


def run_label(path):
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or path


def plot_logs(log_paths, keys=DEFAULT_KEYS, out='curves.png'):
    """Draw one panel per key with one line per log; returns the PNG path."""
    logs = [read_log(path) for path in log_paths]
    present = sorted({key for _, records in logs for record in records for key in record})
    missing = [key for key in keys if key not in present]
    if missing:
        raise ValueError(f"Keys {missing} are in none of the logs; available keys: {', '.join(present)}.")

    figure, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True, squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        for path, records in logs:
            points = [(record.get('epoch', index), record[key])
                      for index, record in enumerate(records) if key in record]
            if points:
                epochs, values = zip(*points)
                axis.plot(epochs, values, marker='.', label=run_label(path))
        axis.set_ylabel(key)
        if key.endswith('lr'):
            axis.set_yscale('log')
        axis.grid(alpha=0.3)
    axes[0, 0].legend()
    axes[-1, 0].set_xlabel('epoch')
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', help='log.txt files or output folders that contain one')
    parser.add_argument('--keys', nargs='+', default=list(DEFAULT_KEYS), help='log keys to plot, one panel each')
    parser.add_argument('--out', default='curves.png', help='PNG file to write')
    args = parser.parse_args()
    try:
        print(f"Wrote {plot_logs(args.logs, args.keys, args.out)}")
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


if __name__ == '__main__':
    main()
