"""Microbenchmarks of the convolution and linear shapes inside UniRepLKNet blocks, on CPU.

Answers, with measurements, which implementation of each piece is fastest on this machine:
  1. depthwise KxK conv, NCHW vs channels_last, K = 3, 5, 7, 13;
  2. the dilated branches (k, r) of a K=13 Dilated Reparam Block (facts A.6): dilated conv in
     NCHW / channels_last, the dense (zero-inserted) equivalent kernel, the padding written out first, and
     unireplknet_cpu.same_depthwise_conv (what ships: custom backward, see its docstring);
  3. the pointwise FFN layers: nn.Linear on NHWC vs 1x1 conv in channels_last;
each forward only and forward+backward (grads for input and weight, as in training); and
  4. the weight gradient of each conv of a K=13 DRB from (x, grad_out): unireplknet_cpu's compiled kernel (what
     ships), the batch folding (its fallback) and oneDNN's own backward-weights kernel (one column).

    python benchmarks/micro_dwconv.py --batch 32 --threads 2 --repeats 7 --out micro_dwconv.md
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from timing import interleaved_medians, machine_summary, markdown_table, utc_now

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unireplknet import dilated_to_dense_kernel  # noqa: E402
from unireplknet_cpu import (  # noqa: E402
    compiled_weight_grad_kernel, depthwise_conv_weight_grad_by_batch_folding, dilated_depthwise_conv_padded_first,
    same_depthwise_conv,
)

# (channels, resolution) of unireplknet_a's stages at 224x224 input.
STAGE_SHAPES = {0: (40, 56), 1: (80, 28), 2: (160, 14), 3: (320, 7)}
# Dilated branches of a K=13 DRB (facts A.6): (kernel, dilation).
K13_BRANCHES = [(5, 1), (7, 2), (3, 3), (3, 4), (3, 5)]
# Ops with this name prefix are weight gradients computed from (x, grad_out): timed without a backward.
WEIGHT_GRAD = "weight grad"


def as_layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def forward_and_train_steps(op, inputs):
    """Closures for `op(*inputs)` forward only (no grad) and forward+backward (grads for every input)."""
    def forward():
        with torch.no_grad():
            op(*inputs)

    leaves = [t.detach().requires_grad_() for t in inputs]
    # A dense upstream gradient in the output's own layout, as a following layer would send
    # (the gradient of .sum() is a stride-0 expand, which takes different kernels).
    with torch.no_grad():
        grad_out = torch.randn_like(op(*inputs))

    def forward_backward():
        op(*leaves).backward(grad_out)
        for leaf in leaves:
            leaf.grad = None

    return forward, forward_backward


def dwconv_cases(batch):
    """Plain depthwise KxK conv in both layouts at the stage shapes where UniRepLKNet uses it."""
    for stage, kernel in [(0, 3), (1, 3), (1, 5), (1, 7), (1, 13), (2, 13), (3, 13)]:
        channels, res = STAGE_SHAPES[stage]
        for layout in ("NCHW", "channels_last"):
            x = as_layout(torch.randn(batch, channels, res, res), layout)
            w = torch.randn(channels, 1, kernel, kernel)
            yield (f"dwconv {kernel}x{kernel}", f"C={channels} {res}x{res}", layout,
                   lambda x, w, k=kernel, c=channels: F.conv2d(x, w, padding=k // 2, groups=c), (x, w))
        if kernel > 5:
            yield (f"dwconv {kernel}x{kernel}", f"C={channels} {res}x{res}", "channels_last, same_depthwise_conv",
                   lambda x, w: same_depthwise_conv(x, w), (x, w))


def dilated_branch_cases(batch, stage):
    """Each dilated branch of a K=13 DRB, five ways."""
    channels, res = STAGE_SHAPES[stage]
    for kernel, dilation in K13_BRANCHES:
        pad = dilation * (kernel - 1) // 2
        w = torch.randn(channels, 1, kernel, kernel)
        name = f"branch k{kernel} r{dilation} (dense {dilation * (kernel - 1) + 1})"
        shape = f"C={channels} {res}x{res}"

        def dilated(x, w, p=pad, d=dilation, c=channels):
            return F.conv2d(x, w, padding=p, dilation=d, groups=c)

        def dense(x, w, p=pad, d=dilation, c=channels):
            return F.conv2d(x, dilated_to_dense_kernel(w, d), padding=p, groups=c)

        x = torch.randn(batch, channels, res, res)
        yield name, shape, "dilated NCHW", dilated, (x, w)
        x_cl = as_layout(x, "channels_last")
        yield name, shape, "dilated channels_last", dilated, (x_cl, w)
        if dilation > 1:
            yield name, shape, "dense-equivalent channels_last", dense, (x_cl, w)
            yield name, shape, "padded first channels_last", \
                lambda x, w, d=dilation: dilated_depthwise_conv_padded_first(x, w, d), (x_cl, w)
            yield name, shape, "same_depthwise_conv channels_last", \
                lambda x, w, d=dilation: same_depthwise_conv(x, w, d), (x_cl, w)


def weight_grad_cases(batch):
    """The weight gradient of each conv of a K=13 DRB at stages 1-3, three ways."""
    kernel = compiled_weight_grad_kernel()
    for stage in (1, 2, 3):
        channels, res = STAGE_SHAPES[stage]
        x, grad_out = (as_layout(torch.randn(batch, channels, res, res), "channels_last") for _ in range(2))
        for k, r in [(13, 1)] + K13_BRANCHES:
            name, shape = f"{WEIGHT_GRAD} k{k} r{r}", f"C={channels} {res}x{res}"
            if kernel is not None:
                yield name, shape, "compiled kernel", \
                    lambda x, g, k=k, r=r: kernel.depthwise_weight_grad(x, g, k, r), (x, grad_out)
            yield name, shape, "batch folding", \
                lambda x, g, k=k, r=r: depthwise_conv_weight_grad_by_batch_folding(x, g, k, r), (x, grad_out)
            yield name, shape, "oneDNN backward-weights", lambda x, g, k=k, r=r, c=channels: (
                torch.nn.grad.conv2d_weight(x, (c, 1, k, k), g, padding=r * (k - 1) // 2, dilation=r, groups=c)), \
                (x, grad_out)


def pointwise_cases(batch):
    """The FFN's C->4C and 4C->C layers: Linear on NHWC vs 1x1 conv on channels_last NCHW."""
    for stage in (0, 1, 2, 3):
        channels, res = STAGE_SHAPES[stage]
        for c_in, c_out in [(channels, 4 * channels), (4 * channels, channels)]:
            name, shape = f"pointwise {c_in}->{c_out}", f"{res}x{res}"
            w = torch.randn(c_out, c_in)
            b = torch.randn(c_out)
            x = torch.randn(batch, c_in, res, res)
            # Original: NCHW tensor permuted to NHWC (a non-contiguous view) before the Linear.
            yield name, shape, "Linear on permuted NCHW", \
                lambda x, w, b: F.linear(x.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2), (x, w, b)
            x_cl = as_layout(x, "channels_last")
            # channels_last NCHW permuted to NHWC is contiguous: the Linear needs no copy.
            yield name, shape, "Linear on permuted channels_last", \
                lambda x, w, b: F.linear(x.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2), (x_cl, w, b)
            yield name, shape, "1x1 conv channels_last", \
                lambda x, w, b: F.conv2d(x, w[:, :, None, None], b), (x_cl, w, b)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default="", help="run only the ops whose name contains this text, e.g. pointwise")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cases = [*dwconv_cases(args.batch), *dilated_branch_cases(args.batch, 1),
             *dilated_branch_cases(args.batch, 2), *dilated_branch_cases(args.batch, 3), *pointwise_cases(args.batch),
             *weight_grad_cases(args.batch)]
    # The implementations of one op at one shape are timed interleaved with each other.
    groups = {}
    for name, shape, variant, op, inputs in cases:
        if args.only not in name:
            continue
        groups.setdefault((name, shape), []).append((variant, op, inputs))
    rows = []
    for (name, shape), variants in groups.items():
        steps = {}
        for variant, op, inputs in variants:
            steps[(variant, "fwd")], steps[(variant, "fwd+bwd")] = forward_and_train_steps(op, inputs)
            if name.startswith(WEIGHT_GRAD):
                del steps[(variant, "fwd+bwd")]
        ms = {key: seconds * 1e3 for key, seconds in interleaved_medians(steps, args.warmup, args.repeats).items()}
        for variant, _, _ in variants:
            backward = ms.get((variant, "fwd+bwd"))
            rows.append([name, shape, variant, f"{ms[(variant, 'fwd')]:.1f}",
                         "-" if backward is None else f"{backward:.1f}"])
            print(" | ".join(rows[-1]), flush=True)

    report = (f"Command: `python benchmarks/micro_dwconv.py --batch {args.batch} --threads {args.threads} "
              f"--repeats {args.repeats} --warmup {args.warmup}"
              + (f" --only '{args.only}'" if args.only else "") + f"`, {utc_now()}, {machine_summary()}. "
              f"Median ms per call (implementations of one op timed interleaved), batch {args.batch}, float32.\n\n"
              + markdown_table(["op", "shape", "implementation", "forward ms", "forward+backward ms"], rows))
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
