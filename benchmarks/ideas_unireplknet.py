"""Whole-model effect of each CPU speed idea on a UniRepLKNet, measured in one interleaved run.

Each idea is applied on top of the previous ones to a fresh model (per instance, by replacing methods
of the DilatedReparamBlocks, blocks or GRNs), so that the rows read as a cumulative "before / after"
sequence; the reparameterised column converts a copy with timm.utils.reparameterize_model.
All variants compute the same function (checked against the first variant before timing).

    python benchmarks/ideas_unireplknet.py --model unireplknet_a --batch 32 --img_size 224 --threads 1
"""
import argparse
import contextlib
import copy
import os
import sys
import types

import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_models import make_eval_step, make_train_step  # noqa: E402  (this folder is sys.path[0])
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402

import unireplknet  # noqa: E402


def dilated_branch(x, weight, dilation):
    return F.conv2d(x, weight, padding=dilation * (weight.shape[-1] - 1) // 2, dilation=dilation, groups=x.shape[1])


def dense_equivalent_branch(x, weight, dilation):
    dense = unireplknet.dilated_to_dense_kernel(weight, dilation)
    return F.conv2d(x, dense, padding=dense.shape[-1] // 2, groups=x.shape[1])


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


def grn_forward_addcmul(self, x):
    """GRN with the scale and the `+ beta` in one pass over the 4C-channel tensor (torch.addcmul)."""
    global_response = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
    scale = self.gamma * (global_response / (global_response.mean(dim=-1, keepdim=True) + 1e-6)) + 1
    return x * scale if self.beta is None else torch.addcmul(self.beta, x, scale)


def release_branch_forward(self, x):
    """UniRepLKNetBlock.branch_forward as in the release: GRN, then the second Linear."""
    x = self.se(self.norm(self.dwconv(x)))
    return self.pwconv2(self.act(self.pwconv1(x)))


@contextlib.contextmanager
def release_layout():
    """Run the model in NCHW as the release does (unireplknet.py moves CPU input to channels_last)."""
    fast_layout = unireplknet.to_fast_layout
    unireplknet.to_fast_layout = lambda x: x
    try:
        yield
    finally:
        unireplknet.to_fast_layout = fast_layout


RELEASE_DRB = drb_forward(dilated_branch, merge_in_eval=False)
# Methods replaced per instance: (class, method name).
BLOCK = (unireplknet.UniRepLKNetBlock, 'branch_forward')
DRB = (unireplknet.DilatedReparamBlock, 'forward')
GRN = (unireplknet.GRNwithNHWC, 'forward')
# (label, channels_last, {(class, method): replacement}); each row adds one idea to the rows above it
# (the GRN addcmul row was measured and dropped, the row after it does not include it). {} is unireplknet.py as shipped.
IDEAS = [
    ("release computation (NCHW)", False, {DRB: RELEASE_DRB, BLOCK: release_branch_forward}),
    ("channels_last end to end", True, {DRB: RELEASE_DRB, BLOCK: release_branch_forward}),
    ("+ eval: DRB branches merged into one kernel on the fly", True,
     {DRB: drb_forward(dilated_branch, merge_in_eval=True), BLOCK: release_branch_forward}),
    ("+ train: dilated branches as dense-equivalent kernels", True,
     {DRB: drb_forward(dense_equivalent_branch, merge_in_eval=True), BLOCK: release_branch_forward}),
    ("+ train: dilated branches by space-to-batch instead", True, {BLOCK: release_branch_forward}),
    ("+ GRN scale and beta in one addcmul", True, {BLOCK: release_branch_forward, GRN: grn_forward_addcmul}),
    ("+ GRN scale folded into the next Linear (shipped)", True, {}),
]


def build_variant(name, replacements):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000)
    for module in model.modules():
        for (cls, method), function in replacements.items():
            if type(module) is cls:
                setattr(module, method, types.MethodType(function, module))
    return model


def in_layout(step, channels_last):
    if channels_last:
        return step

    def release_layout_step():
        with release_layout():
            step()
    return release_layout_step


def randomize_norm_statistics(model):
    """Non-trivial BN running statistics, so that the eval-mode equivalence check means something."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


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
    for label, channels_last, replacements in IDEAS:
        model = randomize_norm_statistics(build_variant(args.model, replacements))
        with torch.no_grad(), (contextlib.nullcontext() if channels_last else release_layout()):
            check = (model.eval()(x[:2]), model.train()(x[:2]))
        if reference is None:
            reference = check
        for mode, ours, ref in zip(("eval", "train"), check, reference):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4, msg=f"{label} changes the {mode} output")
        deployed = reparameterize_model(copy.deepcopy(model).eval())
        steps[(label, "train")] = in_layout(make_train_step(model, x, labels), channels_last)
        steps[(label, "eval")] = in_layout(make_eval_step(model, x), channels_last)
        steps[(label, "deploy")] = in_layout(make_eval_step(deployed, x), channels_last)

    seconds = interleaved_medians(steps, args.warmup, args.repeats)
    rows = [[label] + [f"{args.batch / seconds[(label, mode)]:.1f}" for mode in ("train", "eval", "deploy")]
            for label, _, _ in IDEAS]
    print(f"`python benchmarks/ideas_unireplknet.py --model {args.model} --batch {args.batch} --img_size "
          f"{args.img_size} --threads {args.threads} --repeats {args.repeats} --warmup {args.warmup}`, {utc_now()}, "
          f"{machine_summary()}; img/s, median of {args.repeats} interleaved repeats.\n")
    print(markdown_table(["idea (cumulative)", "train step img/s", "eval img/s (train structure)",
                          "eval img/s (reparameterised)"], rows))


if __name__ == "__main__":
    main()
