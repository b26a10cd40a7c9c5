"""Plug MTA into training loops: collator, loss step, HF Trainer, checkpoints.

``MTADistillationTrainer`` needs ``transformers`` and is imported lazily.
"""

from __future__ import annotations

from typing import Any

from .checkpoint import load_mta_loss, save_mta_loss, save_student
from .collator import MTACollator, batch_to
from .distill import distillation_loss, same_vocab_kl, teacher_forward, unit_coverage
from .evaluate import heldout_ce
from .logit_kd import (
    boundary_pairs,
    shared_vocab,
    sorted_top_probs,
    uld_distance,
    uld_distance_to_probs,
    uld_kd,
)

__all__ = [
    "MTACollator",
    "MTADistillationTrainer",
    "batch_to",
    "boundary_pairs",
    "distillation_loss",
    "heldout_ce",
    "load_mta_loss",
    "same_vocab_kl",
    "save_mta_loss",
    "save_student",
    "shared_vocab",
    "sorted_top_probs",
    "teacher_forward",
    "uld_distance",
    "uld_distance_to_probs",
    "uld_kd",
    "unit_coverage",
]


def __getattr__(name: str) -> Any:
    if name == "MTADistillationTrainer":
        from .trainer import MTADistillationTrainer

        return MTADistillationTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
