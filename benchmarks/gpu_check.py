"""UniRepLKNet on an accelerator: is every path the model picks there correct, how fast is it, what does with_cp save?

Run by `benchmarks/gpu_check.sh` on a CUDA machine (under 8 minutes on one GPU); `--device cpu --tiny` runs the same
checks on a tiny model on CPU (tests/test_benchmark_scripts.py does, so the script stays working without a GPU).

1. Correctness: one training step (train mode, cross-entropy, backward) and the eval and deployed (reparameterised)
   outputs of every configuration below are compared with the plain computation (fast_cpu_kernels=False, NCHW) in
   float64 on the same device: the model as built by default there ("auto"), with unireplknet_cpu forced on
   ("fast_cpu_kernels"), in channels_last, and under AMP float16 and bfloat16. Relative errors (norm of the difference
   over the norm of the reference, over the logits and over all gradients together) must stay within a tolerance per
   precision.
2. Speed, in one interleaved run (median of --repeats): training steps (forward, backward, AdamW) and deployed
   inference of the same configurations against the release computation (plain, float32, NCHW).
3. Memory: the peak allocated memory of one training step without and with with_cp=True (CUDA only).

    python benchmarks/gpu_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 --out gpu_check.md
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import interleaved_medians, machine_summary, markdown_table, utc_now  # noqa: E402  (this folder)

import unireplknet  # noqa: E402

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), kernel_sizes=((3,), (13,), (13, 3), (13,)))
# Largest relative error accepted against the float64 plain computation (TF32 convs are on by default on GPUs).
TOLERANCE = {'float32': 1e-2, 'float16': 5e-2, 'bfloat16': 1e-1}
# (name, fast_cpu_kernels, channels_last, autocast dtype or None)
CONFIGS = [
    ('auto (as built by default here)', None, False, None),
    ('fast_cpu_kernels=True', True, False, None),
    ('channels_last', None, True, None),
    ('AMP float16', None, False, torch.float16),
    ('AMP bfloat16', None, False, torch.bfloat16),
    ('AMP bfloat16, channels_last', None, True, torch.bfloat16),
]
LOSS_SCALE = 1024.  # a static loss scale keeps float16 gradients from underflowing without an optimizer step


def build(args, fast_cpu_kernels=None, with_cp=False):
    """The model with the same random weights every call; layer scale 1 and random GRN parameters (0 at init) so that
    every part of the block shows in the outputs."""
    torch.manual_seed(0)
    arch = TINY if args.tiny else dict(zip(('depths', 'dims'), unireplknet.VARIANTS[args.model]))
    model = unireplknet.UniRepLKNet(**arch, num_classes=10, layer_scale_init_value=1.0, attempt_use_lk_impl=False,
                                    fast_cpu_kernels=fast_cpu_kernels, with_cp=with_cp)
    with torch.no_grad():
        for grn in model.modules():
            if isinstance(grn, unireplknet.GRNwithNHWC):
                grn.gamma.normal_(0, 0.5)
                grn.beta.normal_(0, 0.1)
    return model


def prepare(model, device, channels_last):
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def as_input(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def training_step_outputs(model, x, labels, autocast_dtype):
    """Logits and the gradients (unscaled, float64) of one train-mode step."""
    model.train().zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(x)
    (F.cross_entropy(logits.double(), labels) * LOSS_SCALE).backward()
    grads = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).double().flatten() / LOSS_SCALE
                       for p in model.parameters()])  # a parameter the computation skipped counts as a zero gradient
    return logits.double(), grads


def eval_outputs(model, x, autocast_dtype):
    """Eval-mode logits in the training structure and after reparameterisation (the model is converted)."""
    outputs = []
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        outputs.append(model.eval()(x).double())
        outputs.append(reparameterize_model(model)(x).double())
    return outputs


def relative_error(value, reference):
    return ((value - reference).norm() / reference.norm()).item()


def check_correctness(args, device):
    """Rows [configuration, precision, logits error, gradient error, eval error, deployed error, verdict]."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.check_batch, 3, args.check_img_size, args.check_img_size, generator=generator)
    labels = torch.randint(0, 10, (args.check_batch,), generator=generator)
    x, labels = x.to(device), labels.to(device)
    reference = build(args, fast_cpu_kernels=False).double().to(device)
    ref_logits, ref_grads = training_step_outputs(reference, x.double(), labels, None)
    ref_eval = eval_outputs(copy.deepcopy(reference), x.double(), None)
    rows, failures = [], 0
    for name, fast, channels_last, dtype in CONFIGS:
        model = prepare(build(args, fast_cpu_kernels=fast), device, channels_last)
        model.load_state_dict(build(args, fast_cpu_kernels=False).state_dict())  # the reference's initial weights
        logits, grads = training_step_outputs(model, as_input(x, channels_last), labels, dtype)
        evals = eval_outputs(model, as_input(x, channels_last), dtype)
        errors = [relative_error(logits, ref_logits), relative_error(grads, ref_grads)] + [
            relative_error(out, ref) for out, ref in zip(evals, ref_eval)]
        precision = 'float32' if dtype is None else str(dtype).replace('torch.', '')
        ok = all(error <= TOLERANCE[precision] for error in errors)
        failures += not ok
        rows.append([name, precision, *(f'{e:.1e}' for e in errors), 'ok' if ok else 'FAIL'])
    return rows, failures


def synchronized(step, device):
    def run():
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    return run


def make_train_step(model, x, labels, autocast_dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x).float(), labels)
        (loss * LOSS_SCALE).backward()
        optimizer.step()
    return step


def make_deployed_step(model, x, autocast_dtype):
    model = reparameterize_model(model.eval())

    def step():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                             enabled=autocast_dtype is not None):
            model(x)
    return step


def time_configurations(args, device):
    """Rows [configuration, train img/s, deployed img/s, train speed-up, deployed speed-up] against the release."""
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    configs = [('release computation (plain, float32, NCHW)', False, False, None)] + CONFIGS
    steps = {}
    for name, fast, channels_last, dtype in configs:
        inputs = as_input(x, channels_last)
        steps[(name, 'train')] = synchronized(make_train_step(
            prepare(build(args, fast), device, channels_last), inputs, labels, dtype), device)
        steps[(name, 'deploy')] = synchronized(make_deployed_step(
            prepare(build(args, fast), device, channels_last), inputs, dtype), device)
    seconds = interleaved_medians(steps, args.warmup, args.repeats)
    release = configs[0][0]
    return [[name, f'{args.batch / seconds[(name, "train")]:.1f}', f'{args.batch / seconds[(name, "deploy")]:.1f}',
             f'{seconds[(release, "train")] / seconds[(name, "train")]:.2f}x',
             f'{seconds[(release, "deploy")] / seconds[(name, "deploy")]:.2f}x'] for name, *_ in configs]


def with_cp_peak_memory(args, device):
    """Peak allocated MiB of one training step, plain and with_cp=True (CUDA's allocator statistics)."""
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    peaks = {}
    for with_cp in (False, True):
        step = make_train_step(build(args, with_cp=with_cp).to(device), x, labels, None)
        step()  # AdamW's state exists from here on, as in training
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peaks[with_cp] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return peaks


def report(args, device):
    correctness, failures = check_correctness(args, device)
    lines = [f'`python benchmarks/gpu_check.py {" ".join(sys.argv[1:])}`', '',
             f'{utc_now()}; {machine_summary()}; device {device}'
             f'{" (" + torch.cuda.get_device_name(device) + ")" if device.type == "cuda" else ""}; '
             f'model {"tiny" if args.tiny else args.model}; auto picks fast_cpu_kernels='
             f'{build(args).fast_cpu_kernels} here.', '',
             f'Correctness: one training step and the eval / deployed outputs against the plain computation in '
             f'float64, batch {args.check_batch} at {args.check_img_size}; relative errors (tolerance float32 '
             f'{TOLERANCE["float32"]}, float16 {TOLERANCE["float16"]}, bfloat16 {TOLERANCE["bfloat16"]}).', '',
             markdown_table(['configuration', 'precision', 'logits', 'gradients', 'eval', 'deployed', 'verdict'],
                            correctness), '',
             f'Speed: batch {args.batch} at {args.img_size}, median of {args.repeats} interleaved repeats after '
             f'{args.warmup} warm-up calls.', '',
             markdown_table(['configuration', 'train step img/s', 'deployed img/s', 'train vs release',
                             'deployed vs release'], time_configurations(args, device)), '']
    if device.type == 'cuda':
        peaks = with_cp_peak_memory(args, device)
        lines.append(f'with_cp memory (one training step, peak allocated): plain {peaks[False]:.0f} MiB, with_cp '
                     f'{peaks[True]:.0f} MiB ({peaks[True] / peaks[False]:.2f}x).')
    else:
        lines.append('with_cp memory: measured on CUDA only (on CPU: `bench_models.py --memory`).')
    return '\n'.join(lines) + '\n', failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--model', default='unireplknet_a', choices=unireplknet.MODEL_NAMES)
    parser.add_argument('--tiny', action='store_true', help='a tiny UniRepLKNet instead of --model (for tests)')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--img_size', type=int, default=224)
    parser.add_argument('--check_batch', type=int, default=4)
    parser.add_argument('--check_img_size', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--out', default='', help='also write the report to this markdown file')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is visible here (use --device cpu --tiny to try the script).')
    text, failures = report(args, device)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    if failures:
        raise SystemExit(f'{failures} configuration(s) differ from the plain computation beyond the tolerance.')


if __name__ == '__main__':
    main()
