"""``MTADistillationTrainer``: HF ``Trainer`` with a frozen teacher and the MTA loss.

    trainer = MTADistillationTrainer(
        model=student, teacher_model=teacher, mta_loss=MTALoss.from_configs(s_cfg, t_cfg),
        args=TrainingArguments(..., remove_unused_columns=False),
        train_dataset=TextDataset(texts), data_collator=MTACollator(Aligner(t_tok, s_tok)),
    )
    trainer.train(); trainer.save_model(out_dir)

* The MTALoss is attached to the student as the submodule ``student.mta_loss`` so that the
  Trainer's optimizer trains its projectors and DDP/FSDP/DeepSpeed wrap and synchronise them like
  any student parameter. Saved checkpoints strip those keys from the student weights (the dir
  stays a plain ``from_pretrained``-able model) and write the projectors next to it
  (``mta_projectors.safetensors`` + ``mta_config.json``; see ``checkpoint.load_mta_loss``).
* The teacher runs in eval mode under ``torch.no_grad``, on the student's device, backbone only
  (no LM head) unless a logit-KD hook or entropy weighting needs its logits.
* Loss components (``ce``, ``mta``, ``dsa``, ``hid``, ``kd``) are averaged over the logging
  interval and logged with the Trainer's ``loss``.
* Distributed: the loss is per rank (see ``distill.py``); nothing is gathered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .checkpoint import MTA_PREFIX, save_mta_loss, split_state_dict
from .distill import LogitKD, distillation_loss

__all__ = ["MTADistillationTrainer"]

_LOGGED = ("ce", "mta", "dsa", "hid", "kd")


class MTADistillationTrainer(Trainer):
    """HF ``Trainer`` computing ``(1-kd)·CE + kd·KD + mta_weight·L_MTA``.

    Args (besides the ``Trainer``'s own; ``model`` is the student):
        teacher_model: the teacher (frozen here: ``requires_grad_(False)``, eval mode).
        mta_loss: an ``mta_ext.MTALoss``; attached to the student as ``student.mta_loss``.
        mta_weight: weight of ``L_MTA`` (0: plain fine-tuning, the teacher is never run).
        kd_weight, logit_kd: optional logit distillation (see ``distillation_loss``).

    ``args.remove_unused_columns`` is forced to ``False`` (the collator needs the text column).
    """

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module | None = None,
        mta_loss: nn.Module | None = None,
        mta_weight: float = 1.0,
        kd_weight: float = 0.0,
        logit_kd: LogitKD | None = None,
        **kwargs: Any,
    ) -> None:
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise ValueError("MTADistillationTrainer: pass the student as model=")
        if (mta_weight != 0.0 or kd_weight > 0) and teacher_model is None:
            raise ValueError("MTADistillationTrainer: the MTA/KD terms need teacher_model=")
        if mta_weight != 0.0 and mta_loss is None:
            raise ValueError("MTADistillationTrainer: mta_weight != 0 needs mta_loss=")
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.remove_unused_columns:
            # The default would drop the "text"/"spans" columns before the collator sees them.
            training_args.remove_unused_columns = False
        if mta_loss is not None:
            model.add_module(MTA_PREFIX.rstrip("."), mta_loss)
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            teacher_model.to(self.args.device)
        self.mta_loss = mta_loss
        self.mta_weight = float(mta_weight)
        self.kd_weight = float(kd_weight)
        self.logit_kd = logit_kd
        # Every term is a per-micro-batch mean: let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._component_sums: dict[str, float] = {}
        self._component_count = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, comps, student_out = distillation_loss(
            model,
            self.teacher_model,
            inputs,
            self.mta_loss,
            mta_weight=self.mta_weight,
            kd_weight=self.kd_weight,
            logit_kd=self.logit_kd,
        )
        if model.training:
            for k in _LOGGED:
                if k in comps:
                    self._component_sums[k] = self._component_sums.get(k, 0.0) + float(comps[k])
            self._component_count += 1
        if not return_outputs:
            return loss
        # Only the logits: the Trainer's eval loop would otherwise concatenate every hidden state.
        return loss, {"logits": student_out.logits}

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._component_count and "loss" in logs:  # a training log, not an eval one
            for k, v in self._component_sums.items():
                logs[k] = round(v / self._component_count, 6)
            self._component_sums, self._component_count = {}, 0
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        student_sd, mta_sd = split_state_dict(state_dict)
        super()._save(output_dir, state_dict=student_sd)
        if self.mta_loss is not None and self.args.should_save:
            save_mta_loss(self.mta_loss, output_dir, state_dict=mta_sd or None)
