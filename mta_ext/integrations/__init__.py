"""Plug MTA into training loops: collator, loss step, HF Trainer, checkpoints.

This package only wires: the losses it calls live beside ``mta_ext.losses``
(``mta_ext.logit_kd`` holds the logit-KD hooks). ``MTADistillationTrainer`` needs
``transformers`` and is imported lazily.
"""

from __future__ import annotations

from typing import Any

# Moved to mta_ext.logit_kd (the losses' home); re-exported here for existing imports.
from ..logit_kd import (  # noqa: F401
    boundary_pairs,
    same_vocab_kl,
    shared_vocab,
    sorted_top_probs,
    uld_distance,
    uld_distance_to_probs,
    uld_kd,
)
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


def __getattr__(name: str) -> Any:
    if name == "MTADistillationTrainer":
        from .trainer import MTADistillationTrainer

        return MTADistillationTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
