"""MESA (Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022): the EMA model as a teacher against overfitting.

`--mesa WEIGHT --mesa_start_ratio R` (with `--model_ema true`): from optimizer update ceil(R * total updates) on,
every micro-batch adds a distillation term towards the EMA model's outputs on the same (mixed) inputs. The term is
the one FasterViT's recipes use (`kdloss` in NVlabs/FasterViT fastervit/train.py, as
in FasterViT's training README), with temperature T = 3 and a fixed factor 50:

    loss = criterion(student, targets) + WEIGHT * 50 * KL(q || p)
    KL(q || p) = (1/B) * sum_b sum_k q_bk * (log q_bk - log p_bk),  p = softmax(student / 3),  q = softmax(teacher / 3)

(`torch.nn.functional.kl_div(log p, q, reduction='batchmean')`; B = micro-batch size; no T^2 factor). The teacher
runs without gradient in its own (eval) mode: it gets no gradient and its weights change only through the EMA update.

Difference from FasterViT: it switches MESA on per epoch (`epoch / epochs > R`); here it starts at an optimizer
update, `ceil(R * epochs * steps_per_epoch)`, so the start does not depend on how epochs are cut. Nothing of MESA
needs saving: the teacher is the EMA (already in every checkpoint) and the start follows from the resumed step.
"""
import math

import torch
import torch.nn.functional as F

TEMPERATURE = 3.0
KL_FACTOR = 50.0


def mesa_distillation_loss(student_logits, teacher_logits):
    """50 * KL(softmax(teacher / 3) || softmax(student / 3)), averaged over the batch; at least float32 precision
    (autocast's bfloat16/float16 logits are widened)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p = F.log_softmax(student_logits.to(dtype) / TEMPERATURE, dim=1)
    q = F.softmax(teacher_logits.to(dtype) / TEMPERATURE, dim=1)
    return KL_FACTOR * F.kl_div(log_p, q, reduction='batchmean')


class Mesa:
    """When the MESA term applies and what it is; `weight` 0 switches it off."""

    def __init__(self, weight, start_ratio, total_updates):
        if weight < 0:
            raise ValueError(f'--mesa must be >= 0 (0 switches MESA off), got {weight}')
        if not 0 <= start_ratio <= 1:
            raise ValueError(f'--mesa_start_ratio must be in [0, 1] (a fraction of training), got {start_ratio}')
        self.weight = weight
        self.start_update = math.ceil(start_ratio * total_updates)

    def active(self, update):
        """Whether the term is added at global optimizer update `update` (counted from 0)."""
        return self.weight > 0 and update >= self.start_update

    def loss_term(self, teacher, samples, student_logits):
        """WEIGHT * the distillation loss towards the teacher's outputs on `samples` (no gradient to the teacher)."""
        teacher_device = next(teacher.parameters()).device  # --model_ema_force_cpu keeps the EMA on the CPU
        with torch.no_grad():
            teacher_logits = teacher(samples.to(teacher_device)).to(student_logits.device)
        return self.weight * mesa_distillation_loss(student_logits, teacher_logits)
