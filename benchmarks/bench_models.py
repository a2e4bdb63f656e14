"""CPU speed of a model against timm ConvNeXt baselines, measured in one run.

For --model and every --compare model it reports:
  params (M), GMACs (torch.utils.flop_counter at batch 1, deploy structure, MACs = FLOPs / 2),
  training-step img/s (forward + backward + AdamW step, training structure, train mode),
  eval img/s in the training structure, and eval img/s after structural reparameterisation
  (timm.utils.reparameterize_model, which calls every `reparameterize()`; a no-op for ConvNeXt).
With --with_cp it adds a training-step row for --model built with with_cp=True.
With --memory it instead measures the peak memory of one training step, plain and with_cp=True,
each in a fresh process (peak RSS from /proc/self/status VmHWM, minus the RSS before the step).

The machine is usually shared, so the timed calls are interleaved round-robin across all
configurations (one call of each per round) and each configuration's median is reported: a burst
of outside load then hits every configuration alike and the ratios stay meaningful. Each mode
(training step, eval, reparameterised eval) is timed in a fresh process: the steps timed before
change glibc malloc's state and with it every model's page faults (see `time_mode`). To time with
an allocator that keeps freed memory (no page faults after the first step), run under
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295.

    python benchmarks/bench_models.py --model unireplknet_a --batch 32 --img_size 224 \
        --compare convnext_atto,convnext_pico,convnext_tiny --with_cp --out BENCHMARKS.md
    python benchmarks/bench_models.py --model unireplknet_a --memory --out BENCHMARKS.md
"""
import argparse
import copy
import importlib
import multiprocessing
import os
import shlex
import sys

import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402  (this folder is sys.path[0])

# Repository modules whose import registers models with timm.
MODEL_MODULES = ("unireplknet", "replknet")


def register_repository_models():
    for name in MODEL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # the module exists but one of its own imports failed
                raise


def build_model(name, with_cp=False):
    if name not in timm.list_models():
        raise SystemExit(f"--model/--compare: unknown model '{name}'. Use a timm name "
                         f"(e.g. convnext_atto) or one registered by {', '.join(MODEL_MODULES)}.py.")
    kwargs = {"with_cp": True} if with_cp else {}
    return timm.create_model(name, num_classes=1000, **kwargs)


def as_input_layout(model, x, channels_last):
    if channels_last:
        return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x


def count_gmacs(model, img_size):
    """Multiply-accumulates of one 1xCxHxW forward, in G (the unit the papers call 'FLOPs'). Counted on the meta
    device: the architecture's count, not that of a CPU fast path (a 13x13 conv run as 15x15 with a zero ring)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        copy.deepcopy(model).to("meta")(torch.empty(1, 3, img_size, img_size, device="meta"))
    return counter.get_total_flops() / 2 / 1e9


def make_train_step(model, x, labels):
    """A closure running one forward + backward + AdamW step in train mode, as in training."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


def make_eval_step(model, x):
    def step():
        model.eval()
        with torch.inference_mode():
            model(x)

    return step


def speed_rows(args):
    """(label, model name, channels_last) per row. --model gets NCHW input, as users call it; its own forward decides
    its internal layout. Baselines run as timm builds them, and optionally in channels_last."""
    baselines = [n for n in args.compare.split(",") if n and n != args.model]
    rows_spec = [(args.model, args.model, False)] + [(n, n, False) for n in baselines]
    if args.compare_channels_last:
        rows_spec += [(f"{n} (channels_last)", n, True) for n in baselines]
    return rows_spec


def time_mode(args, mode):
    """Runs in a fresh process: {(label, mode): median seconds} of every row's `mode` step, timed interleaved.

    One process per mode, because glibc's malloc adapts its thresholds to the sizes freed before: training steps
    timed first leave a heap that serves the next eval steps without page faults, which changed the baselines'
    inference speed up to 2x (BENCHMARKS.md). Each mode's rows still share one process, and so one allocator state.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_repository_models()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 1000, (args.batch,))
    steps = {}
    for label, name, channels_last in speed_rows(args):
        model, model_x = as_input_layout(build_model(name), x, channels_last)
        if mode == "train":
            steps[(label, mode)] = make_train_step(model, model_x, labels)
        else:
            steps[(label, mode)] = make_eval_step(reparameterize_model(model.eval()) if mode == "deploy" else model,
                                                  model_x)
    if mode == "train" and args.with_cp:
        steps[(args.model, "train_cp")] = make_train_step(build_model(args.model, with_cp=True), x, labels)
    return interleaved_medians(steps, args.warmup, args.repeats)


def speed_report(args):
    rows_spec = speed_rows(args)
    info = {}
    for label, name, channels_last in rows_spec:
        deployed = reparameterize_model(build_model(name).eval())
        info[label] = (sum(p.numel() for p in build_model(name).parameters()) / 1e6,
                       sum(p.numel() for p in deployed.parameters()) / 1e6,
                       count_gmacs(deployed, args.img_size))
    seconds = {}
    spawn = multiprocessing.get_context("spawn")
    for mode in ("train", "eval", "deploy"):
        with spawn.Pool(1) as pool:
            seconds.update(pool.apply(time_mode, (args, mode)))
    img_per_s = {key: args.batch / s for key, s in seconds.items()}
    rows = []
    for label, _, _ in rows_spec:
        train_params, deploy_params, gmacs = info[label]
        rows.append([label, f"{train_params:.2f} / {deploy_params:.2f}", f"{gmacs:.3f}",
                     f"{img_per_s[(label, 'train')]:.1f}", f"{img_per_s[(label, 'eval')]:.1f}",
                     f"{img_per_s[(label, 'deploy')]:.1f}"])
    if args.with_cp:
        rows.append([f"{args.model} with_cp=True", "", "", f"{img_per_s[(args.model, 'train_cp')]:.1f}", "", ""])
    table = markdown_table(["model", "params M (train / deploy)", "GMACs", "train step img/s",
                            "eval img/s (train structure)", "eval img/s (reparameterised)"], rows)

    ratios = []
    for label, _, _ in rows_spec[1:]:
        ratios.append(f"- {args.model} / {label}: training step "
                      f"{img_per_s[(args.model, 'train')] / img_per_s[(label, 'train')]:.2f}x, "
                      f"reparameterised eval {img_per_s[(args.model, 'deploy')] / img_per_s[(label, 'deploy')]:.2f}x")
    if args.with_cp:
        ratios.append(f"- {args.model} with_cp=True training step takes "
                      f"{seconds[(args.model, 'train_cp')] / seconds[(args.model, 'train')]:.2f}x the plain step's time")
    return table + ("\n\n" + "\n".join(ratios) if ratios else "")


def current_rss_bytes(field):
    """VmRSS (current) or VmHWM (peak since start or last reset) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (the --memory mode needs Linux)")


def measure_train_step_memory(name, with_cp, batch, img_size, threads):
    """Runs in a fresh process: (RSS before, peak RSS during) the first training step, in bytes."""
    torch.set_num_threads(threads)
    register_repository_models()
    x = torch.randn(batch, 3, img_size, img_size)
    step = make_train_step(build_model(name, with_cp=with_cp), x, torch.randint(0, 1000, (batch,)))
    before = current_rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS, so it records this step's peak only
    step()
    return before, current_rss_bytes("VmHWM")


def memory_report(args):
    rows, peaks = [], {}
    spawn = multiprocessing.get_context("spawn")
    for with_cp in (False, True):
        with spawn.Pool(1) as pool:
            before, peak = pool.apply(measure_train_step_memory, (args.model, with_cp, args.batch, args.img_size,
                                                                   args.threads))
        peaks[with_cp] = (peak, peak - before)
        rows.append([args.model, str(with_cp), f"{before / 2**20:.0f}", f"{peak / 2**20:.0f}",
                     f"{(peak - before) / 2**20:.0f}"])
    table = markdown_table(["model", "with_cp", "RSS before step MiB", "peak RSS during step MiB",
                            "step's own peak (peak - before) MiB"], rows)
    return (table + f"\n\n- with_cp=True / plain: peak RSS {peaks[True][0] / peaks[False][0]:.2f}x, "
            f"step's own peak {peaks[True][1] / peaks[False][1]:.2f}x")


def write_section(path, key, body):
    """Replace the block marked with `key` in the markdown file at `path`, or append it.
    Everything outside the markers (other sections, other engineers' tables) is left as it is."""
    begin, end = f"<!-- bench_models: {key} -->", f"<!-- /bench_models: {key} -->"
    block = f"{begin}\n{body}\n{end}"
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unireplknet_a")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads (default: torch's default, usually the core count)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per configuration first")
    parser.add_argument("--compare", default="convnext_atto",
                        help="comma-separated timm baselines timed in the same run, e.g. "
                             "convnext_atto,convnext_pico,convnext_tiny ('' for none)")
    parser.add_argument("--with_cp", action="store_true",
                        help="also time a training step of --model built with with_cp=True")
    parser.add_argument("--memory", action="store_true",
                        help="measure peak memory of one training step, plain vs with_cp=True, instead of speed")
    parser.add_argument("--compare_channels_last", action="store_true",
                        help="also time every --compare baseline converted (model and input) to channels_last")
    parser.add_argument("--out", default=None,
                        help="markdown file to update (e.g. BENCHMARKS.md); the table goes in a marked block")
    args = parser.parse_args()
    for flag in ("batch", "img_size", "threads", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_repository_models()

    body = memory_report(args) if args.memory else speed_report(args)
    command = "python benchmarks/bench_models.py " + shlex.join(sys.argv[1:])
    mode = "memory" if args.memory else "speed"
    timing_note = "" if args.memory else (f", median of {args.repeats} interleaved repeats after "
                                          f"{args.warmup} warm-up calls")
    key = f"{mode} {args.model} batch {args.batch} @{args.img_size}"
    report = (f"#### {key}\n\n`{command}`\n\n{utc_now()}; {machine_summary()}; batch {args.batch}, "
              f"{args.img_size}x{args.img_size}, float32{timing_note}.\n\n{body}")
    print(report)
    if args.out:
        write_section(args.out, key, report)


if __name__ == "__main__":
    main()
