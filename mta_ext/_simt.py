"""The SIMT backend: the CUDA kernels of ``csrc/cuda`` executed on the CPU, for tests.

A build with ``MTA_WITH_SIMT=ON`` (the test and CI builds; never the user wheel unless asked)
compiles the same ``.cu`` sources a second time with the host compiler against a small
implementation of the CUDA subset they use (``csrc/simt``). Inside :func:`enabled`, every
``mta_ext`` op called on CPU tensors runs its CUDA kernels (blocks one after another, the threads
of a block as cooperative fibers) with device semantics: no host value checks, host metadata
(``plan_sizes``, ``num_incidences``) used as on a GPU. What this proves and what it cannot (timing,
the memory model across blocks, tensor-core rounding, occupancy): docs/DESIGN.md, "The SIMT
backend".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from . import _loader  # noqa: F401  (loads the compiled ops)

__all__ = ["active", "available", "enabled", "reset_stats", "stats", "suspended"]

_lock = threading.Lock()
_settings: tuple[int, int] | None = None  # (shuffle_seed, sm) while enabled, else None


def available() -> bool:
    """Whether this build has the SIMT backend (``MTA_WITH_SIMT=ON``)."""
    return hasattr(torch.ops.mta_ext, "_simt_configure")


@contextlib.contextmanager
def enabled(*, shuffle_seed: int | None = None, sm: int = 90) -> Iterator[None]:
    """Run the ops' CUDA kernels on CPU tensors inside the block.

    Args:
        shuffle_seed: ``None``: threads run in a fixed order (thread 0 first) between barriers,
            deterministic. An int: the order is shuffled per block and per round, seeded, so a
            missing ``__syncthreads`` or a read-before-write race between threads changes the
            result.
        sm: the compute capability the kernels' host code sees, e.g. 90 (bf16/fp16 tensor-core
            paths) or 70 (the CUDA-core fallbacks of GPUs before sm_80).

    Process-wide (the ops read one switch); not re-entrant with different settings.
    """
    if not available():
        raise RuntimeError(
            "mta_ext._simt: this build has no SIMT backend; rebuild with MTA_WITH_SIMT=ON "
            "(tools/dev_build.sh does by default on a CPU-only torch)"
        )
    global _settings
    settings = (-1 if shuffle_seed is None else int(shuffle_seed), int(sm))
    with _lock:
        if _settings is not None:
            raise RuntimeError("mta_ext._simt.enabled() is already active")
        _settings = settings
    try:
        torch.ops.mta_ext._simt_configure(True, *settings)  # validates sm
        yield
    finally:
        torch.ops.mta_ext._simt_configure(False, -1, 90)
        with _lock:
            _settings = None


def active() -> bool:
    """Whether :func:`enabled` is active (the ops run their CUDA kernels on CPU tensors)."""
    return _settings is not None


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Inside :func:`enabled`: the ops run their CPU kernels in this block (e.g. a baseline to
    compare the CUDA kernels with), then the backend resumes with the same settings."""
    settings = _settings
    if settings is None:
        yield
        return
    torch.ops.mta_ext._simt_configure(False, -1, 90)
    try:
        yield
    finally:
        torch.ops.mta_ext._simt_configure(True, *settings)


def stats() -> dict[str, int]:
    """The scheduler's counters since :func:`reset_stats`: kernel launches, blocks run, block
    barriers released, warp collectives completed."""
    launches, blocks, barriers, collectives = torch.ops.mta_ext._simt_stats()
    return {
        "launches": launches,
        "blocks": blocks,
        "barriers": barriers,
        "collectives": collectives,
    }


def reset_stats() -> None:
    torch.ops.mta_ext._simt_reset_stats()
