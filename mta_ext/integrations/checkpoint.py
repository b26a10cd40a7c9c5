"""Save / load the MTA projectors next to a student checkpoint.

A student dir written by :func:`save_student` is a normal HF model dir (``from_pretrained``
loads it, without any MTA keys) plus ``mta_projectors.safetensors`` (the Hid projectors) and
``mta_config.json`` (schedule and loss options), from which :func:`load_mta_loss` rebuilds the
``MTALoss`` to resume distillation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MTA_CONFIG_FILE",
    "MTA_PREFIX",
    "PROJECTORS_FILE",
    "load_mta_loss",
    "save_mta_loss",
    "save_student",
    "split_state_dict",
]

PROJECTORS_FILE = "mta_projectors.safetensors"
MTA_CONFIG_FILE = "mta_config.json"
# Name under which MTADistillationTrainer attaches the MTALoss to the student (so DDP/FSDP wrap
# and sync the projectors and the optimizer sees them); stripped from saved student weights.
MTA_PREFIX = "mta_loss."


def split_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a student state dict into (student keys, MTA keys without the prefix)."""
    student = {k: v for k, v in state_dict.items() if not k.startswith(MTA_PREFIX)}
    mta = {k[len(MTA_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(MTA_PREFIX)}
    return student, mta


def _mta_config(mta_loss: nn.Module) -> dict[str, Any]:
    projectors = getattr(mta_loss, "projectors", None) or []
    return {
        "format": 1,
        "schedule": [list(p) for p in mta_loss.schedule],
        "student_hidden_size": [p.in_features for p in projectors] or None,
        "teacher_hidden_size": [p.out_features for p in projectors] or None,
        "bias": bool(projectors and projectors[0].bias is not None),
        **{k: getattr(mta_loss, k) for k in ("weighting", "hid", "hid_weight", "span_weight")},
    }


def save_mta_loss(
    mta_loss: nn.Module,
    out_dir: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``mta_projectors.safetensors`` + ``mta_config.json`` for ``mta_loss`` to ``out_dir``.

    ``state_dict``: the MTALoss's weights when they come from elsewhere (e.g. gathered by
    FSDP/DeepSpeed); default ``mta_loss.state_dict()``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = mta_loss.state_dict() if state_dict is None else state_dict
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in sd.items()},
        str(out / PROJECTORS_FILE),
        metadata={"format": "pt"},
    )
    (out / MTA_CONFIG_FILE).write_text(json.dumps(_mta_config(mta_loss), indent=2))


def load_mta_loss(model_dir: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the ``MTALoss`` (schedule, options, trained projectors) saved in ``model_dir``."""
    from safetensors.torch import load_file

    from ..losses import MTALoss

    d = Path(model_dir)
    cfg_path = d / MTA_CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no MTA config (was the student saved by mta_ext?)")
    cfg = json.loads(cfg_path.read_text())
    mta_loss = MTALoss(
        [tuple(p) for p in cfg["schedule"]],
        cfg["student_hidden_size"],
        cfg["teacher_hidden_size"],
        weighting=cfg["weighting"],
        hid=cfg["hid"],
        hid_weight=cfg["hid_weight"],
        span_weight=cfg["span_weight"],
        bias=cfg["bias"],
    )
    weights = d / PROJECTORS_FILE
    if weights.is_file():
        mta_loss.load_state_dict(load_file(str(weights)))
    return mta_loss


def save_student(
    student: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    mta_loss: nn.Module | None = None,
) -> Path:
    """Save the student as an HF model dir, plus its projectors when ``mta_loss`` is given.

    Works whether or not the MTALoss is attached to the student as ``student.mta_loss``.
    """
    out = Path(out_dir)
    student_sd, mta_sd = split_state_dict(student.state_dict())
    student.save_pretrained(out, state_dict=student_sd)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if mta_loss is not None:
        save_mta_loss(mta_loss, out, state_dict=mta_sd or None)
    return out
