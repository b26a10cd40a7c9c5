"""The debug mode of the ops: full value checks on every device.

By default the ops check METADATA (dtype, rank, device, sizes) on every call and VALUES (ranges in
bounds, ``cu_units`` monotone, weights finite and ``>= 0``, host metadata matching the tensors)
only for CPU tensors: on CUDA a value check reads device memory, a host sync that stalls the
launch queue and breaks CUDA-graph capture, and the layouts the ``Aligner`` builds are validated
once on the CPU anyway. The debug mode adds the value checks on CUDA too, for hunting a bug (a
hand-made layout, corrupted ranges). It is a process-wide flag in the compiled library, on when
the environment variable ``MTA_EXT_DEBUG`` is set (not ``0``) at import, or after
``mta_ext.set_debug(True)``.
"""

from __future__ import annotations

import torch

from . import _loader  # noqa: F401  (loads the compiled ops)

__all__ = ["debug_enabled", "set_debug"]


def set_debug(enabled: bool = True) -> None:
    """Switch the ops' debug mode (full value checks on CUDA tensors, with host syncs) on/off."""
    torch.ops.mta_ext._set_debug(bool(enabled))


def debug_enabled() -> bool:
    """Whether the ops' debug mode is on (``MTA_EXT_DEBUG=1`` or :func:`set_debug`)."""
    return bool(torch.ops.mta_ext._debug())
