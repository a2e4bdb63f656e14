"""Whole-model effect of each CPU speed idea on a UniRepLKNet, measured in one interleaved run.

Each idea is applied on top of the previous ones to a fresh model (per instance, by replacing the
DilatedReparamBlock's forward), so that the rows read as a cumulative "before / after" sequence.
All variants compute the same function (checked against the first variant before timing).

    python benchmarks/ideas_unireplknet.py --model unireplknet_a --batch 32 --img_size 224 --threads 1
"""
import argparse
import os
import sys
import types

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_models import make_eval_step, make_train_step  # noqa: E402  (this folder is sys.path[0])
from micro_dwconv import dilate_kernel, space_to_batch_dwconv  # noqa: E402
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402

import unireplknet  # noqa: E402


def dilated_branch(x, weight, dilation):
    return F.conv2d(x, weight, padding=dilation * (weight.shape[-1] - 1) // 2, dilation=dilation, groups=x.shape[1])


def dense_equivalent_branch(x, weight, dilation):
    dense = dilate_kernel(weight, dilation)
    return F.conv2d(x, dense, padding=dense.shape[-1] // 2, groups=x.shape[1])


def space_to_batch_branch(x, weight, dilation):
    return dilated_branch(x, weight, 1) if dilation == 1 else space_to_batch_dwconv(x, weight, dilation)


def drb_forward(branch_conv, merge_in_eval):
    """A DilatedReparamBlock.forward computing each dilated branch with `branch_conv`, and (if
    merge_in_eval) the whole block as one conv with the fused kernel when in eval mode."""
    def forward(self, x):
        if self.deploy:
            return self.lk_origin(x)
        if merge_in_eval and not self.training:
            kernel, bias = self.fused_kernel_and_bias()
            return F.conv2d(x, kernel, bias, padding=self.kernel_size // 2, groups=x.shape[1])
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            weight = getattr(self, f'dil_conv_k{k}_{r}').weight
            out = out + getattr(self, f'dil_bn_k{k}_{r}')(branch_conv(x, weight, r))
        return out
    return forward


# (label, channels_last, DRB forward or None for the model's own)
IDEAS = [
    ("original (NCHW)", False, None),
    ("channels_last end to end", True, None),
    ("+ eval: DRB branches merged into one kernel on the fly", True, drb_forward(dilated_branch, True)),
    ("+ train: dilated branches as dense-equivalent kernels", True, drb_forward(dense_equivalent_branch, True)),
    ("+ train: dilated branches by space-to-batch", True, drb_forward(space_to_batch_branch, True)),
]


def build_variant(name, channels_last, forward):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000)
    if forward is not None:
        for module in model.modules():
            if isinstance(module, unireplknet.DilatedReparamBlock):
                module.forward = types.MethodType(forward, module)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def randomize_norm_statistics(model):
    """Non-trivial BN running statistics, so that the eval-mode equivalence check means something."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unireplknet_a")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 1000, (args.batch,))
    steps, reference = {}, None
    for label, channels_last, forward in IDEAS:
        model = build_variant(args.model, channels_last, forward)
        model_x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        randomize_norm_statistics(model)
        with torch.no_grad():
            check = (model.eval()(model_x[:2]), model.train()(model_x[:2]))
        if reference is None:
            reference = check
        for mode, ours, ref in zip(("eval", "train"), check, reference):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4, msg=f"{label} changes the {mode} output")
        steps[(label, "train")] = make_train_step(model, model_x, labels)
        steps[(label, "eval")] = make_eval_step(model, model_x)

    seconds = interleaved_medians(steps, args.warmup, args.repeats)
    rows = [[label, f"{args.batch / seconds[(label, 'train')]:.1f}", f"{args.batch / seconds[(label, 'eval')]:.1f}"]
            for label, _, _ in IDEAS]
    print(f"`python benchmarks/ideas_unireplknet.py --model {args.model} --batch {args.batch} --img_size "
          f"{args.img_size} --threads {args.threads} --repeats {args.repeats} --warmup {args.warmup}`, {utc_now()}, "
          f"{machine_summary()}; img/s, median of {args.repeats} interleaved repeats.\n")
    print(markdown_table(["idea (cumulative)", "train step img/s", "eval img/s (train structure)"], rows))


if __name__ == "__main__":
    main()
