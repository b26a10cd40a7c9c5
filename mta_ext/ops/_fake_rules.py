"""The one rule the fake kernels repeat from the C++ argument checks: every tensor argument on
the reference tensor's device.

The real kernels check it (``check_same_device``, csrc/common/checks.h, whose message this
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
