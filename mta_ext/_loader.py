"""Load the compiled extension, refusing clearly when it does not match the running torch.

``import torch`` must run before the extension's shared object is loaded: the .so links
against libtorch_cpu/libc10, which only the torch import puts into the process.
"""

from __future__ import annotations

import torch

try:
    from . import _build_info
except ImportError as exc:  # running from a source tree that was never built
    from pathlib import Path

    here = Path(__file__).resolve().parent
    raise ImportError(
        f"mta_ext's compiled extension is missing: {here} has no _build_info.py. This is an "
        "unbuilt source tree (if you installed mta_ext, the current directory shadows the "
        "installed package: run from another directory). Install with `pip install .` (or "
        "`pip install --no-build-isolation .` against your own torch), or build in place for "
        "development with `tools/dev_build.sh`."
    ) from exc


def _base(version: str) -> str:
    return version.split("+", 1)[0]


def _check_torch() -> None:
    built, running = _build_info.TORCH_VERSION, torch.__version__
    fix = (
        "Rebuild mta_ext against the torch you run: `pip install --no-build-isolation "
        "--force-reinstall --no-deps .` from the mta_ext source tree (or install "
        f"torch=={_base(built)})."
    )
    if _base(built) != _base(running):
        raise ImportError(
            f"mta_ext was built against torch {built} but torch {running} is installed; "
            f"compiled torch extensions only load with the torch they were built for. {fix}"
        )
    if _build_info.WITH_CUDA and not torch.version.cuda:
        raise ImportError(
            f"mta_ext was built with CUDA kernels against torch {built}, but the running torch "
            f"{running} is a CPU-only build. {fix}"
        )


_check_torch()

from . import _C  # noqa: E402  (registers torch.ops.mta_ext.*)

__all__ = ["_C", "_build_info"]
