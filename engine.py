"""Training and evaluation loops.

`train_one_epoch` runs the optimizer updates of one epoch (optionally from a mid-epoch step after a
resume): it sets the per-update cosine LR/WD, calls `TrainStep` once per update, logs, and writes step
checkpoints or stops on request. `TrainStep` is one update: gradient accumulation over --update_freq
micro-batches (DDP gradients are synchronised only on the last one), AMP (float16 with a GradScaler,
or bfloat16), MESA, gradient clipping in every precision, the EMA update, and one small all-reduce
that agrees across ranks on "some loss was not finite" and "a stop was requested" before the
optimizer step. That agreement is the only time a step waits for the device: the step's metrics stay
device tensors (`DeviceMetrics`) and are read back once per print interval.

`evaluate` returns top-1/top-5 accuracy and loss computed from summed counts, so a distributed
evaluation over an unpadded sampler gives the single-process result.
"""
import contextlib
import itertools
import math
from typing import NamedTuple, Optional

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


def optimizer_values(optimizer):
    """The largest and smallest learning rate over the groups and the scheduled weight decay (host floats)."""
    lrs = [group['lr'] for group in optimizer.param_groups]
    weight_decay = next((group['weight_decay'] for group in reversed(optimizer.param_groups)
                         if group['weight_decay'] > 0), None)
    return dict(lr=max(lrs), min_lr=min(lrs), weight_decay=weight_decay)


def agree_across_ranks(loss_sum, stop_requested):
    """(some rank's loss was not finite, some rank was asked to stop): one small all-reduce and one host read.

    `loss_sum` is this rank's sum of the update's micro-batch losses (a device scalar): a sum over ranks that holds
    any non-finite loss is itself non-finite. This read is the only point where a training step waits for the
    device: the non-finite check must be settled on every rank before the optimizer step it guards. The stop flag is
    filled on the device (torch.full) rather than copied from the host, since a blocking host-to-device copy would
    wait for the device too.
    """
    if not utils.is_dist_avail_and_initialized():
        return not math.isfinite(loss_sum.item()), stop_requested
    flags = torch.stack([loss_sum.float(), torch.full((), float(stop_requested), device=loss_sum.device)])
    dist.all_reduce(flags)
    loss_sum_everywhere, stops = flags.tolist()
    return not math.isfinite(loss_sum_everywhere), stops > 0


class StepResult(NamedTuple):
    """What one optimizer update leaves for logging: per micro-batch metrics and the gradient norm (device tensors,
    read once per print interval by DeviceMetrics), and the ranks' agreed flags."""
    micro_batch_metrics: list  # one dict per micro-batch: loss, class_acc, mesa_loss (tensors or None)
    grad_norm: Optional[torch.Tensor]  # None when the update was skipped (loss_was_nonfinite)
    loss_was_nonfinite: bool  # on some rank; the optimizer step and the EMA update were then skipped
    stop: bool  # some rank was asked to stop (utils.request_stop)


class TrainStep:
    """One optimizer update over `update_freq` micro-batches: the body of train_one_epoch, testable alone.

    Reading top to bottom in `__call__`: each micro-batch goes to the device (channels_last, mixup), the forward and
    loss run under autocast (plus the MESA term), backward is scaled by 1 / update_freq and DDP all-reduces gradients
    on the last micro-batch only; then the ranks agree on "some loss was not finite" and "a stop was requested"; a
    non-finite loss skips the update (the caller stops the run), otherwise the gradients are unscaled, clipped and
    applied, and the EMA follows. Nothing here reads a value back from the device except that one agreement.
    """

    def __init__(self, model, criterion, optimizer, precision, device, *, update_freq=1, clip_grad=None,
                 mixup_fn=None, model_ema=None, mesa=None, channels_last=False, track_accuracy=True):
        self.model, self.criterion, self.optimizer, self.precision = model, criterion, optimizer, precision
        self.device = torch.device(device)
        self.update_freq, self.clip_grad, self.mixup_fn = update_freq, clip_grad, mixup_fn
        self.model_ema, self.mesa = model_ema, mesa
        self.channels_last, self.track_accuracy = channels_last, track_accuracy
        unwrapped = getattr(model, '_orig_mod', model)  # under torch.compile's wrapper (--compile)
        self.model_without_ddp = getattr(unwrapped, 'module', unwrapped)  # under DDP: the EMA's source

    def __call__(self, micro_batches, iteration):
        """Train on the `update_freq` (samples, targets) pairs of `micro_batches` at global update `iteration`
        (which decides whether MESA is on); the schedules are set by the caller (set_schedule_values)."""
        metrics = []
        for index, (samples, targets) in enumerate(micro_batches):
            samples, targets = self.to_device(samples, targets)
            loss, output, mesa_term = self.forward_backward(samples, targets, iteration,
                                                            last_micro_batch=index == self.update_freq - 1)
            metrics.append(dict(loss=loss, class_acc=self.accuracy(output, targets), mesa_loss=mesa_term))
        if len(metrics) != self.update_freq:
            raise ValueError(f'an optimizer update got {len(metrics)} micro-batches, expected --update_freq '
                             f'{self.update_freq}: the data loader must yield a multiple of update_freq batches')
        losses = [values['loss'] for values in metrics]
        nonfinite_anywhere, stop = agree_across_ranks(sum(losses[1:], losses[0]), utils.stop_requested())
        if nonfinite_anywhere:
            return StepResult(metrics, None, True, stop)
        return StepResult(metrics, self.apply_update(), False, stop)

    def to_device(self, samples, targets):
        samples = samples.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            samples = samples.contiguous(memory_format=torch.channels_last)
        if self.mixup_fn is not None:
            samples, targets = self.mixup_fn(samples, targets)
        return samples, targets

    def forward_backward(self, samples, targets, iteration, last_micro_batch):
        """Loss (with the MESA term once active) and its backward; returns (loss, output, mesa term) without
        autograd history.

        Every rank runs backward even on a non-finite loss, so no rank is left waiting in DDP's all-reduce.
        """
        # DDP all-reduces gradients in backward; skip that on the micro-batches that only accumulate.
        sync_context = contextlib.nullcontext() if last_micro_batch or not hasattr(self.model, 'no_sync') \
            else self.model.no_sync()
        with sync_context:
            with self.precision.autocast():
                output = self.model(samples)
                loss = self.criterion(output, targets)
                mesa_term = None
                if self.mesa is not None and self.mesa.active(iteration):
                    mesa_term = self.mesa.loss_term(self.model_ema.module, samples, output)
                    loss = loss + mesa_term
            self.precision.backward(loss / self.update_freq)
        # The loss and the MESA term are kept for logging until the next printed line: without their graph.
        return loss.detach(), output, None if mesa_term is None else mesa_term.detach()

    def accuracy(self, output, targets):
        """Top-1 accuracy of the micro-batch (a device tensor), or None for regression tasks (tasks.py).
        Soft (mixed) targets count a hit on their largest class."""
        if not self.track_accuracy:
            return None
        hard_targets = targets.argmax(dim=-1) if targets.ndim == output.ndim else targets
        return (output.argmax(dim=-1) == hard_targets).float().mean()

    def apply_update(self):
        """Unscale, clip and apply the accumulated gradients, clear them, update the EMA; return the gradient norm
        (a device tensor)."""
        grad_norm = self.precision.step(self.optimizer, self.model.parameters(), self.clip_grad)
        self.optimizer.zero_grad()
        if self.model_ema is not None:
            self.model_ema.update(self.model_without_ddp)
        return grad_norm


class MicroBatchGroups:
    """A loader's micro-batches in groups of `update_freq`, one group per optimizer update.

    Each group is read lazily (one micro-batch in memory at a time); its first micro-batch is fetched before the
    group is handed out, so MetricLogger's `data` time still measures waiting for the loader."""

    def __init__(self, data_loader, update_freq):
        self.data_loader, self.update_freq = data_loader, update_freq

    def __len__(self):
        return len(self.data_loader) // self.update_freq

    def __iter__(self):
        iterator = iter(self.data_loader)
        for _ in range(len(self)):
            yield itertools.chain([next(iterator)], itertools.islice(iterator, self.update_freq - 1))


class DeviceMetrics:
    """Step metrics kept as device tensors and read back once per print interval.

    Reading a CUDA value (`.item()`) waits until the GPU has finished all queued work; once per value per step that
    keeps small models launch-bound. `add` only stores the tensors; `flush` (called by MetricLogger.log_every before
    it prints, and at the end of the epoch) reads all of them with one `.tolist()` and feeds the MetricLogger and
    TensorBoard in order, so the printed lines and TensorBoard curves are those of a read per value.
    """

    def __init__(self, metric_logger, log_writer=None):
        self.metric_logger, self.log_writer = metric_logger, log_writer
        self.pending = []  # (TensorBoard step, {name: tensor, float or None})

    def add(self, tensorboard_step, values):
        self.pending.append((tensorboard_step, values))

    def flush(self):
        tensors = [value for _, values in self.pending for value in values.values() if torch.is_tensor(value)]
        read = iter(torch.stack([tensor.float() for tensor in tensors]).tolist() if tensors else [])
        for tensorboard_step, values in self.pending:
            values = {name: next(read) if torch.is_tensor(value) else value for name, value in values.items()}
            self.metric_logger.update(**values)
            if self.log_writer is not None:
                self.log_writer.set_step(tensorboard_step)
                self.log_writer.update(head='loss', loss=values['loss'], class_acc=values['class_acc'])
                self.log_writer.update(head='opt', lr=values['lr'], min_lr=values['min_lr'],
                                       weight_decay=values['weight_decay'], grad_norm=values['grad_norm'])
        self.pending = []


def train_one_epoch(model, criterion, data_loader, optimizer, precision, device, epoch, *,
                    steps_per_epoch, lr_schedule, wd_schedule=None, start_step=0, update_freq=1,
                    clip_grad=None, mixup_fn=None, model_ema=None, log_writer=None,
                    channels_last=False, save_every_steps=0, save_step_checkpoint=None,
                    print_freq=10, track_accuracy=True, mesa=None):
    """Train from optimizer update `start_step` to the end of the epoch (one TrainStep per update).

    data_loader must yield exactly (steps_per_epoch - start_step) * update_freq micro-batches (see
    utils.ResumableTrainSampler). After each update, `save_step_checkpoint(epoch, steps_done)` is
    called on all ranks when `save_every_steps` divides the global update count, or when a stop was
    requested; in the latter case utils.TrainingInterrupted is raised afterwards. A non-finite loss on any
    rank raises utils.NonFiniteLossError before the optimizer step, without a checkpoint.
    `mesa` (mesa.Mesa, needs model_ema) adds the EMA-teacher term from its start update on, logged as mesa_loss.
    Progress lines are printed every `print_freq` optimizer updates.
    Returns the epoch's averaged meters (loss, lr, min_lr, weight_decay, grad_norm, class_acc).
    """
    model.train()
    train_step = TrainStep(model, criterion, optimizer, precision, device, update_freq=update_freq,
                           clip_grad=clip_grad, mixup_fn=mixup_fn, model_ema=model_ema, mesa=mesa,
                           channels_last=channels_last, track_accuracy=track_accuracy)
    metric_logger = metric_logging.MetricLogger(delimiter='  ')
    metric_logger.add_meter('lr', metric_logging.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    metric_logger.add_meter('min_lr', metric_logging.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    device_metrics = DeviceMetrics(metric_logger, log_writer)
    header = f'Epoch: [{epoch}]'
    optimizer.zero_grad()

    updates = metric_logger.log_every(MicroBatchGroups(data_loader, update_freq), print_freq, header,
                                      before_print=device_metrics.flush)
    for step, micro_batches in enumerate(updates, start=start_step):
        iteration = epoch * steps_per_epoch + step
        set_schedule_values(optimizer, lr_schedule[iteration], None if wd_schedule is None else wd_schedule[iteration])
        result = train_step(micro_batches, iteration)

        # One logged record per micro-batch (TensorBoard counts micro-batches); the update's values on the last.
        for index, metrics in enumerate(result.micro_batch_metrics):
            last = index == update_freq - 1
            device_metrics.add(iteration * update_freq + index,
                               dict(loss=metrics['loss'], class_acc=metrics['class_acc'], **optimizer_values(optimizer),
                                    grad_norm=result.grad_norm if last else None, mesa_loss=metrics['mesa_loss']))
        if result.loss_was_nonfinite:
            losses = [metrics['loss'].item() for metrics in result.micro_batch_metrics]
            print(f'Loss is not finite (this rank: {losses}) at epoch {epoch}, step {step}, '
                  f'lr {lr_schedule[iteration]:.3e}; stopping training without writing a checkpoint. '
                  'Try a lower --lr, --clip_grad, or --amp_dtype bfloat16.')
            raise utils.NonFiniteLossError(f'non-finite loss at epoch {epoch}, step {step}')

        steps_done = step + 1
        periodic = save_every_steps > 0 and (iteration + 1) % save_every_steps == 0
        if save_step_checkpoint is not None and (periodic or result.stop):
            save_step_checkpoint(epoch, steps_done)
        if result.stop:
            utils.barrier()
            print(f'Stop requested: checkpoint written at epoch {epoch}, step {steps_done}.')
            raise utils.TrainingInterrupted(f'stopped at epoch {epoch}, step {steps_done}')

    device_metrics.flush()
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
