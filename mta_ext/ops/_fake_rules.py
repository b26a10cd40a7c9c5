"""The rules the fake kernels repeat from C++: the device rule of the argument checks, and the
accumulation dtype of the outputs.

The real kernels check devices (``check_same_device``, csrc/common/checks.h, whose message this
mirrors); a call that mixes a meta tensor with real ones dispatches to the fake kernel, which
must then fail the same way. Every other argument check and message lives in C++ only.
"""

from __future__ import annotations

import torch


def check_devices(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming ``op`` and the argument if any of ``others`` (``None`` skipped)
    is not on ``ref``'s device."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                "move them to the same device"
            )


def acc_dtype(*ts: torch.Tensor) -> torch.dtype:
    """The ops' accumulation (and float output) dtype: float64 if any of ``ts`` is float64,
    else float32 (in C++: ``acc_dtype`` of the relational_loss kernels, ``row_cosine_acc``)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32
