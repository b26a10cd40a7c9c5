"""mta_ext: fast cross-tokenizer MTA distillation losses for PyTorch.

Compiled ops live under ``torch.ops.mta_ext``; this package is the thin, typed Python API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from . import _loader  # noqa: F401  (import torch, check versions, load the ops)
from ._debug import debug_enabled, set_debug
from ._info import build_info
from .alignment import Aligner, Alignment, UnitLayout, align_encoded, explain
from .losses import MTALoss, structural_loss
from .offsets import offsets_for_ids
from .ops import relational_loss, row_cosine, segment_pool, token_salience
from .phrases import annotate_spans
from .schedule import LayerPair, LayerSchedule

if TYPE_CHECKING:
    from . import reference


def __getattr__(name: str):
    """``mta_ext.reference`` (the pure-PyTorch oracle) is imported on first use, not by
    ``import mta_ext``."""
    if name == "reference":
        import importlib

        return importlib.import_module(".reference", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Aligner",
    "Alignment",
    "LayerPair",
    "LayerSchedule",
    "MTALoss",
    "UnitLayout",
    "__version__",
    "align_encoded",
    "annotate_spans",
    "build_info",
    "debug_enabled",
    "explain",
    "offsets_for_ids",
    "reference",
    "relational_loss",
    "row_cosine",
    "segment_pool",
    "set_debug",
    "structural_loss",
    "token_salience",
]
