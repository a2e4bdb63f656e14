"""A/B timing of unireplknet.py (+ unireplknet_cpu.py) against an earlier git revision, or against the plain model,
in one process.

Loads `unireplknet.py` and `unireplknet_cpu.py` as committed at --before (via `git show`) next to the working-tree
files (`--before plain`: the working tree built with fast_cpu_kernels=False, the release's computation), builds the
same variant from both with the same weights, checks that they compute the same outputs, and times them interleaved
(with timm's convnext_atto as a third column, for the ratio the speed targets use). Use it after changing a hot
path: a whole-model A/B in one process is much less noisy than two separate benchmark runs.

    python benchmarks/ab_unireplknet.py --before HEAD~1 --mode train --repeats 9
    python benchmarks/ab_unireplknet.py --before plain --mode deploy --repeats 15
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import warnings

import timm
import torch
from timm.utils import reparameterize_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from bench_models import make_eval_step, make_train_step  # noqa: E402  (this folder is sys.path[0])
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402

import unireplknet  # noqa: E402


MODULES = ("unireplknet", "unireplknet_cpu")


def git_show(revision, filename):
    """The file as committed at `revision`, or None if it did not exist there."""
    result = subprocess.run(["git", "show", f"{revision}:{filename}"], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0 and filename == "unireplknet.py":
        raise SystemExit(f"--before {revision}: git cannot show unireplknet.py there ({result.stderr.strip()}).")
    return result.stdout if result.returncode == 0 else None


def build_at_revision(revision, depths, dims):
    """The variant built by unireplknet.py (+ unireplknet_cpu.py) as committed at `revision`.

    The revision's files are imported under their own names while the model is built (the fast module imports
    `unireplknet`, and the model binds its classes then); the working tree's modules are put back afterwards.
    """
    saved_modules = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    with tempfile.TemporaryDirectory() as directory:
        for name in MODULES:
            source = git_show(revision, f"{name}.py")
            if source is not None:
                with open(os.path.join(directory, f"{name}.py"), "w") as f:
                    f.write(source)
        sys.path.insert(0, directory)
        try:
            with warnings.catch_warnings():  # its factories re-register the timm names; the model is built directly
                warnings.simplefilter("ignore")
                return importlib.import_module("unireplknet").UniRepLKNet(depths=depths, dims=dims)
        finally:
            sys.path.remove(directory)
            for name in MODULES:
                sys.modules.pop(name, None)
            sys.modules.update(saved_modules)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True,
                        help="git revision to compare against, or 'plain' (the working tree without unireplknet_cpu)")
    parser.add_argument("--model", default="unireplknet_a", choices=unireplknet.MODEL_NAMES)
    parser.add_argument("--mode", default="train", choices=["train", "eval", "deploy"],
                        help="training step (forward + backward + AdamW), eval in the training structure, or "
                             "eval after reparameterisation")
    parser.add_argument("--baseline", default="convnext_atto", help="timm model timed alongside ('' for none)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    depths, dims = unireplknet.VARIANTS[args.model]
    if args.before == "plain":
        before = unireplknet.UniRepLKNet(depths=depths, dims=dims, fast_cpu_kernels=False)
    else:
        before = build_at_revision(args.before, depths, dims)
    models = {f"before ({args.before})": before, "working tree": unireplknet.UniRepLKNet(depths=depths, dims=dims)}
    models["working tree"].load_state_dict(models[f"before ({args.before})"].state_dict())
    if args.baseline:
        models[args.baseline] = timm.create_model(args.baseline)

    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 1000, (args.batch,))
    with torch.no_grad():
        outputs = [model.eval()(x[:2]) for name, model in models.items() if name != args.baseline]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4, msg="the two revisions differ")
    steps = {}
    for name, model in models.items():
        if args.mode == "train":
            steps[name] = make_train_step(model, x, labels)
        else:
            steps[name] = make_eval_step(reparameterize_model(model.eval()) if args.mode == "deploy" else model, x)
    seconds = interleaved_medians(steps, args.warmup, args.repeats)

    before = seconds[f"before ({args.before})"]
    rows = [[name, f"{args.batch / t:.1f}", f"{before / t:.3f}x"] for name, t in seconds.items()]
    print(f"`python benchmarks/ab_unireplknet.py --before {args.before} --model {args.model} --mode {args.mode} "
          f"--batch {args.batch} --img_size {args.img_size} --repeats {args.repeats}`, {utc_now()}, "
          f"{machine_summary()}; median of {args.repeats} interleaved repeats.\n")
    print(markdown_table([args.model if not args.baseline else "model", f"{args.mode} img/s", "speed vs before"],
                         rows))
    if args.baseline:
        print(f"\n{args.model} / {args.baseline}: before {seconds[args.baseline] / before:.3f}x, "
              f"working tree {seconds[args.baseline] / seconds['working tree']:.3f}x")


if __name__ == "__main__":
    main()
