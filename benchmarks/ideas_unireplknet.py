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


def space_to_batch_branch(x, weight, dilation):
    """The first shipped training path: dilated branches by space-to-batch, autograd through its ops."""
    if dilation == 1:
        return dilated_branch(x, weight, dilation)
    return unireplknet.dilated_depthwise_conv_by_space_to_batch(x, weight, dilation)


def grn_scale_autograd(grn, x):
    """GRN's (gamma * Nx + 1) with torch.linalg.vector_norm and autograd's backward of it."""
    return unireplknet._grn_response_scale(torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True), grn.gamma)


def grn_forward_autograd_norm(self, x):
    out = grn_scale_autograd(self, x) * x
    return out if self.beta is None else out + self.beta


def grn_forward_addcmul(self, x):
    """GRN with the scale and the `+ beta` in one pass over the 4C-channel tensor (torch.addcmul)."""
    scale = grn_scale_autograd(self, x)
    return x * scale if self.beta is None else torch.addcmul(self.beta, x, scale)


def grn_then_linear_autograd(grn, linear, x):
    """The first shipped GRN fold: per-sample Linear weights through autograd, only where pixels > 2x outputs."""
    batch, height, width, channels = x.shape
    if height * width <= 2 * linear.out_features:
        return linear(grn(x))
    weight = linear.weight.unsqueeze(0) * grn_scale_autograd(grn, x).reshape(batch, 1, channels)
    bias = linear.weight.new_zeros(linear.out_features) if linear.bias is None else linear.bias
    if grn.beta is not None:
        bias = bias + linear.weight @ grn.beta.reshape(channels)
    out = torch.baddbmm(bias.reshape(1, 1, -1), x.reshape(batch, height * width, channels), weight.transpose(1, 2))
    return out.reshape(batch, height, width, linear.out_features)


def se_then_linear(se, linear, x):
    """SE gate folded into a per-sample copy of the first Linear's weight where pixels > outputs (not shipped)."""
    batch, channels, height, width = x.shape
    if height * width <= linear.out_features:
        return linear(se(x).permute(0, 2, 3, 1))
    gate = torch.sigmoid(se.up(F.relu(se.down(x.mean(dim=(2, 3), keepdim=True)))))
    weight = linear.weight.unsqueeze(0) * gate.reshape(batch, 1, channels)
    pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    out = torch.baddbmm(linear.bias.reshape(1, 1, -1), pixels, weight.transpose(1, 2))
    return out.reshape(batch, height, width, linear.out_features)


def release_branch_forward(self, x):
    """UniRepLKNetBlock.branch_forward as in the release: GRN, then the second Linear."""
    x = self.se(self.norm(self.dwconv(x)))
    return self.pwconv2(self.act(self.pwconv1(x)))


def branch_forward_with(grn_then_linear, fold_se=False):
    """UniRepLKNetBlock.branch_forward with a given GRN + Linear computation and GELU out of place."""
    def branch_forward(self, x):
        x = self.norm(self.dwconv(x))
        x = se_then_linear(self.se, self.pwconv1[1], x) if fold_se else self.pwconv1(self.se(x))
        x = grn_then_linear(self.act[1], self.pwconv2[0], self.act[0](x))
        for layer in self.pwconv2[1:]:
            x = layer(x)
        return x
    return branch_forward


def residual_forward_out_of_place(self, x):
    return x + self.drop_path(self.scale(self.branch_forward(x)))


def downsample_out_of_place(self, index, x):
    return self.downsample_layers[index](x)


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
RESIDUAL = (unireplknet.UniRepLKNetBlock, 'residual_forward')
DRB = (unireplknet.DilatedReparamBlock, 'forward')
GRN = (unireplknet.GRNwithNHWC, 'forward')
DOWNSAMPLE = (unireplknet.UniRepLKNet, 'downsample')
# Inference without the in-place GELU and residual (the last idea).
OUT_OF_PLACE = {RESIDUAL: residual_forward_out_of_place, DOWNSAMPLE: downsample_out_of_place}
SPACE_TO_BATCH_DRB = {DRB: drb_forward(space_to_batch_branch, merge_in_eval=True)}
AUTOGRAD_GRN_FOLD = {BLOCK: branch_forward_with(grn_then_linear_autograd), GRN: grn_forward_autograd_norm}
# (label, channels_last, {(class, method): replacement}); each row adds one idea to the rows above it (the rows
# marked "dropped" were measured and not kept; the row after them does not include them). {} is unireplknet.py.
IDEAS = [
    ("release computation (NCHW)", False, {DRB: RELEASE_DRB, BLOCK: release_branch_forward, **OUT_OF_PLACE}),
    ("channels_last end to end", True, {DRB: RELEASE_DRB, BLOCK: release_branch_forward, **OUT_OF_PLACE}),
    ("+ eval: DRB branches merged into one kernel on the fly", True,
     {DRB: drb_forward(dilated_branch, merge_in_eval=True), BLOCK: release_branch_forward, **OUT_OF_PLACE}),
    ("+ train: dilated branches as dense-equivalent kernels", True,
     {DRB: drb_forward(dense_equivalent_branch, merge_in_eval=True), BLOCK: release_branch_forward, **OUT_OF_PLACE}),
    ("+ train: dilated branches by space-to-batch instead", True,
     {**SPACE_TO_BATCH_DRB, BLOCK: release_branch_forward, **OUT_OF_PLACE}),
    ("+ GRN scale and beta in one addcmul (dropped)", True,
     {**SPACE_TO_BATCH_DRB, BLOCK: release_branch_forward, GRN: grn_forward_addcmul, **OUT_OF_PLACE}),
    ("+ GRN scale folded into the next Linear (autograd, pixels > 2x outputs)", True,
     {**SPACE_TO_BATCH_DRB, **AUTOGRAD_GRN_FOLD, **OUT_OF_PLACE}),
    ("+ train: DRB convs with the custom backward (`same_depthwise_conv`)", True,
     {**AUTOGRAD_GRN_FOLD, **OUT_OF_PLACE}),
    ("+ GRN: fold as one Function (pixels > outputs), one-pass norm backward, chunked norms", True,
     {BLOCK: branch_forward_with(unireplknet.grn_then_linear), **OUT_OF_PLACE}),
    ("+ SE gate folded into the first Linear (dropped)", True,
     {BLOCK: branch_forward_with(unireplknet.grn_then_linear, fold_se=True), **OUT_OF_PLACE}),
    ("+ inference: GELUs and the residual add in place (shipped)", True, {}),
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
