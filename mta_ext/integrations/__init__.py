"""Plug MTA into training loops: collator, loss step, HF Trainer, checkpoints.

This package only wires: the losses it calls live beside ``mta_ext.losses``
(``mta_ext.logit_kd`` holds the logit-KD hooks). ``MTADistillationTrainer`` needs
``transformers`` and is imported lazily.
"""

from __future__ import annotations

import warnings
from typing import Any

from .checkpoint import load_mta_loss, save_mta_loss, save_student
from .collator import MTACollator, batch_to
from .distill import distillation_loss, teacher_forward, unit_coverage
from .evaluate import heldout_ce

__all__ = [
    "MTACollator",
    "MTADistillationTrainer",
    "batch_to",
    "distillation_loss",
    "heldout_ce",
    "load_mta_loss",
    "save_mta_loss",
    "save_student",
    "teacher_forward",
    "unit_coverage",
]

# Names that moved to mta_ext.logit_kd: still importable from here, with a DeprecationWarning.
_MOVED_TO_LOGIT_KD = (
    "boundary_pairs",
    "same_vocab_kl",
    "shared_vocab",
    "sorted_top_probs",
    "uld_distance",
    "uld_distance_to_probs",
    "uld_kd",
)


def __getattr__(name: str) -> Any:
    if name == "MTADistillationTrainer":
        from .trainer import MTADistillationTrainer

        return MTADistillationTrainer
    if name in _MOVED_TO_LOGIT_KD:
        from .. import logit_kd

        warnings.warn(
            f"mta_ext.integrations.{name} moved to mta_ext.logit_kd.{name}; import it from "
            "there (this alias will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(logit_kd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
