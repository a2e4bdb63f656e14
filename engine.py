"""Training and evaluation loops.

`train_one_epoch` runs the optimizer updates of one epoch (optionally from a mid-epoch step after a
resume): per-update cosine LR/WD, gradient accumulation over --update_freq micro-batches (DDP
gradients are synchronised only on the last one), AMP (float16 with a GradScaler, or bfloat16),
gradient clipping in every precision, EMA updates, and at every update boundary one small all-reduce
that agrees across ranks on "some loss was not finite" and "a stop was requested".

`evaluate` returns top-1/top-5 accuracy and loss computed from summed counts, so a distributed
evaluation over an unpadded sampler gives the single-process result.
"""
import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

import metric_logging
import utils


class Precision:
    """Autocast, backward scaling and the optimizer update for one precision setting.

    float16 autocast uses a GradScaler (CUDA only); bfloat16 needs no scaler and also works on CPU.
    Gradients are always unscaled before clipping, so --clip_grad means the same in every precision.
    """

    def __init__(self, device, use_amp, amp_dtype='float16'):
        self.device_type = torch.device(device).type
        self.enabled = use_amp
        self.dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}[amp_dtype]
        if use_amp and self.dtype == torch.float16 and self.device_type != 'cuda':
            raise ValueError('--use_amp true with --amp_dtype float16 needs a CUDA device; '
                             'on CPU pass --amp_dtype bfloat16')
        self.scaler = torch.amp.GradScaler('cuda', enabled=use_amp and self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def step(self, optimizer, parameters, clip_grad=None):
        """Unscale, clip (if clip_grad) and apply the gradients; return the total gradient norm."""
        self.scaler.unscale_(optimizer)
        max_norm = clip_grad if clip_grad else float('inf')
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return grad_norm

    def state_dict(self):
        return self.scaler.state_dict()

    def load_state_dict(self, state_dict):
        if state_dict:
            self.scaler.load_state_dict(state_dict)


def set_schedule_values(optimizer, lr, weight_decay):
    """Apply the scheduled LR (times each group's layer-decay lr_scale) and weight decay.

    Values are stored as Python floats (not numpy scalars) so optimizer state_dicts stay loadable with
    torch.load(weights_only=True).
    """
    for group in optimizer.param_groups:
        group['lr'] = float(lr) * group.get('lr_scale', 1.0)
        if weight_decay is not None and group['weight_decay'] > 0:
            group['weight_decay'] = float(weight_decay)


def train_one_epoch(model, criterion, data_loader, optimizer, precision, device, epoch, *,
                    steps_per_epoch, lr_schedule, wd_schedule=None, start_step=0, update_freq=1,
                    clip_grad=None, mixup_fn=None, model_ema=None, log_writer=None,
                    channels_last=False, save_every_steps=0, save_step_checkpoint=None,
                    print_freq=10, track_accuracy=True, mesa=None):
    """Train from optimizer update `start_step` to the end of the epoch.

    data_loader must yield exactly (steps_per_epoch - start_step) * update_freq micro-batches (see
    utils.ResumableTrainSampler). After each update, `save_step_checkpoint(epoch, steps_done)` is
    called on all ranks when `save_every_steps` divides the global update count, or when a stop was
    requested; in the latter case utils.TrainingInterrupted is raised afterwards.
    `mesa` (mesa.Mesa, needs model_ema) adds the EMA-teacher term from its start update on, logged as mesa_loss.
    Returns the epoch's averaged meters (loss, lr, min_lr, weight_decay, grad_norm, class_acc).
    """
    model.train()
    model_without_ddp = getattr(model, '_orig_mod', model)  # under torch.compile's wrapper (--compile)
    model_without_ddp = getattr(model_without_ddp, 'module', model_without_ddp)  # under DDP
    metric_logger = metric_logging.MetricLogger(delimiter='  ')
    metric_logger.add_meter('lr', metric_logging.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    metric_logger.add_meter('min_lr', metric_logging.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    header = f'Epoch: [{epoch}]'
    optimizer.zero_grad()
    loss_was_nonfinite = False
    first_micro_step = start_step * update_freq

    for micro_step, (samples, targets) in enumerate(
            metric_logger.log_every(data_loader, print_freq, header), start=first_micro_step):
        step = micro_step // update_freq
        iteration = epoch * steps_per_epoch + step
        is_update = (micro_step + 1) % update_freq == 0
        if micro_step % update_freq == 0:
            set_schedule_values(optimizer, lr_schedule[iteration],
                                None if wd_schedule is None else wd_schedule[iteration])

        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            samples = samples.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)

        # DDP all-reduces gradients in backward; skip that on the micro-batches that only accumulate.
        sync_context = model.no_sync() if (not is_update and hasattr(model, 'no_sync')) \
            else contextlib.nullcontext()
        with sync_context:
            with precision.autocast():
                output = model(samples)
                loss = criterion(output, targets)
                mesa_term = mesa.loss_term(model_ema.module, samples, output) \
                    if mesa is not None and mesa.active(iteration) else None
                if mesa_term is not None:
                    loss = loss + mesa_term
            loss_value = loss.item()
            # Every rank runs backward even on a bad loss, so no rank is left waiting in DDP's all-reduce.
            precision.backward(loss / update_freq)
        loss_was_nonfinite = loss_was_nonfinite or not math.isfinite(loss_value)

        grad_norm = None
        if is_update:
            nonfinite_anywhere, stop = utils.any_rank_true([loss_was_nonfinite, utils.stop_requested()], device)
            if nonfinite_anywhere:
                print(f'Loss is not finite (this rank: {loss_value}) at epoch {epoch}, step {step}, '
                      f'lr {lr_schedule[iteration]:.3e}; stopping training without writing a checkpoint. '
                      'Try a lower --lr, --clip_grad, or --amp_dtype bfloat16.')
                raise utils.NonFiniteLossError(f'non-finite loss at epoch {epoch}, step {step}')
            grad_norm = precision.step(optimizer, model.parameters(), clip_grad).item()
            optimizer.zero_grad()
            if model_ema is not None:
                model_ema.update(model_without_ddp)

        class_acc = None
        if track_accuracy:  # off for regression tasks (tasks.py)
            # Soft (mixed) targets count a hit on their largest class.
            hard_targets = targets.argmax(dim=-1) if targets.ndim == output.ndim else targets
            class_acc = (output.argmax(dim=-1) == hard_targets).float().mean().item()
        lrs = [group['lr'] for group in optimizer.param_groups]
        weight_decay = next((group['weight_decay'] for group in reversed(optimizer.param_groups)
                             if group['weight_decay'] > 0), None)
        meters = dict(loss=loss_value, class_acc=class_acc, lr=max(lrs), min_lr=min(lrs),
                      weight_decay=weight_decay, grad_norm=grad_norm,
                      mesa_loss=None if mesa_term is None else mesa_term.item())
        metric_logger.update(**meters)
        if log_writer is not None:
            log_writer.set_step(epoch * steps_per_epoch * update_freq + micro_step)
            log_writer.update(head='loss', loss=loss_value, class_acc=class_acc)
            log_writer.update(head='opt', lr=max(lrs), min_lr=min(lrs), weight_decay=weight_decay,
                              grad_norm=grad_norm)

        if is_update:
            steps_done = step + 1
            global_updates = iteration + 1
            periodic = save_every_steps > 0 and global_updates % save_every_steps == 0
            if save_step_checkpoint is not None and (periodic or stop):
                save_step_checkpoint(epoch, steps_done)
            if stop:
                utils.barrier()
                print(f'Stop requested: checkpoint written at epoch {epoch}, step {steps_done}.')
                raise utils.TrainingInterrupted(f'stopped at epoch {epoch}, step {steps_done}')

    metric_logger.synchronize_between_processes()
    print('Averaged stats:', metric_logger)
    # A run resumed exactly at the end of an epoch trains no step in it and has nothing to average.
    return {name: meter.global_avg for name, meter in metric_logger.meters.items() if meter.count > 0}


def main_output(output):
    """The logits of a model that returns a tensor, or a dict of outputs with the logits under 'main'."""
    return output['main'] if isinstance(output, dict) else output


@torch.no_grad()
def evaluate(data_loader, model, device, precision, distributed=False, channels_last=False, print_freq=10):
    """Top-1/top-5 accuracy (%) and mean cross-entropy over every sample the loader yields.

    Sums (loss, correct@1, correct@5, count) and, when `distributed`, adds them over ranks, so a
    sampler that hands each sample to exactly one rank reproduces the single-process numbers.

    Multi-view evaluation: a data set with an attribute `eval_views` = V > 1 yields each sample as a
    (V, ...) stack of views of any input (video: 5 temporal x 3 spatial crops); the V views go through
    the model batch-size images at a time and the sample's prediction is the mean of their class probabilities (the
    loss is the cross-entropy of that mean). Counts stay per sample, so --dist_eval is still exact.

    A data set whose `eval_views_scored` is 'each' (ModelNet-40's rotations, as the release scored them) is scored
    on every (sample, view) pair instead: top-1/top-5, loss and per-class accuracy of each view alone, which is the
    mean of the per-view accuracies. With V > 1 both are logged: `acc1_ensemble` (the views' mean probability) and
    `acc1_per_view` (the mean single-view top-1), whichever `acc1` is.

    mean_class_acc: top-1 accuracy per class, averaged over the classes present (from per-class sums, so also
    exact under --dist_eval); the ModelNet-40 "mAcc".
    """
    model.eval()
    views = getattr(data_loader.dataset, 'eval_views', 1)
    score_each_view = views > 1 and getattr(data_loader.dataset, 'eval_views_scored', 'together') == 'each'
    criterion = torch.nn.CrossEntropyLoss(reduction='sum')
    metric_logger = metric_logging.MetricLogger(delimiter='  ')
    # loss, correct1, correct5, count (of scored items), samples, ensemble correct1, mean single-view correct1
    totals = torch.zeros(7, dtype=torch.float64, device=device)
    class_totals = torch.zeros(2, 0, dtype=torch.float64, device=device)  # per class: correct1, count

    for images, targets in metric_logger.log_every(data_loader, print_freq, 'Test:'):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if views > 1:
            images = images.flatten(0, 1)  # (B, V, ...) -> (B * V, ...)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # B samples of V views are V times a batch of images: they go through the model B images at a time.
        with precision.autocast():
            output = torch.cat([main_output(model(chunk)) for chunk in images.split(len(targets))])
        output = output.float()
        samples = len(targets)
        view_correct = ensemble_correct = torch.zeros((), dtype=torch.float64, device=device)
        if views > 1:
            view_output = output.view(samples, views, -1)
            view_correct = view_output.argmax(dim=-1).eq(targets[:, None]).double().sum() / views
            # log of the mean probability over each sample's views
            ensemble = view_output.log_softmax(dim=-1).logsumexp(dim=1) - math.log(views)
            ensemble_correct = ensemble.argmax(dim=-1).eq(targets).double().sum()
            if score_each_view:
                targets = targets.repeat_interleave(views)
            else:
                output = ensemble
        top = output.topk(min(5, output.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        batch_totals = torch.stack([criterion(output, targets).double(), hits[:, 0].sum().double(),
                                    hits.any(dim=1).sum().double(),
                                    torch.tensor(len(targets), dtype=torch.float64, device=device),
                                    torch.tensor(samples, dtype=torch.float64, device=device),
                                    ensemble_correct, view_correct])
        totals += batch_totals
        class_totals = add_class_counts(class_totals, targets, hits[:, 0], output.shape[1])
        metric_logger.update(loss=batch_totals[0].item() / len(targets),
                             acc1=100.0 * batch_totals[1].item() / len(targets),
                             acc5=100.0 * batch_totals[2].item() / len(targets))

    if distributed and utils.is_dist_avail_and_initialized():
        dist.all_reduce(totals)
        class_totals = all_reduce_class_counts(class_totals)
    loss_sum, correct1, correct5, count, samples, ensemble_correct1, view_correct1 = totals.tolist()
    count, samples = max(count, 1), max(samples, 1)
    seen = class_totals[1] > 0
    stats = {'loss': loss_sum / count, 'acc1': 100.0 * correct1 / count, 'acc5': 100.0 * correct5 / count,
             'mean_class_acc': 100.0 * (class_totals[0][seen] / class_totals[1][seen]).mean().item()
             if seen.any() else 0.0,
             'num_images': int(totals[4].item())}
    if views > 1:
        stats.update(acc1_ensemble=100.0 * ensemble_correct1 / samples, acc1_per_view=100.0 * view_correct1 / samples)
        print(f"* {views} views: Acc@1 of the mean probability {stats['acc1_ensemble']:.3f}, mean single-view Acc@1 "
              f"{stats['acc1_per_view']:.3f} (reported: {'single-view' if score_each_view else 'mean probability'})")
    print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} mean class acc {stats['mean_class_acc']:.3f} "
          f"loss {stats['loss']:.3f} ({stats['num_images']} images)")
    return stats


def add_class_counts(class_totals, targets, correct, num_classes):
    """Per-class (correct@1, count) sums, (2, C), grown to num_classes columns as needed."""
    if class_totals.shape[1] < num_classes:
        class_totals = F.pad(class_totals, (0, num_classes - class_totals.shape[1]))
    class_totals[0].index_add_(0, targets, correct.double())
    class_totals[1].index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
    return class_totals


def all_reduce_class_counts(class_totals):
    """Sum per-class counts over ranks (a rank that saw no batch has no columns yet: pad to the widest first)."""
    width = torch.tensor(class_totals.shape[1], device=class_totals.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    class_totals = F.pad(class_totals, (0, int(width) - class_totals.shape[1]))
    dist.all_reduce(class_totals)
    return class_totals
