"""``mta_ext.build_info()``: what this installation was compiled with and what it runs on."""

from __future__ import annotations

from typing import Any

import torch

from ._loader import _build_info


def build_info() -> dict[str, Any]:
    """Describe the compiled extension.

    Returns a dict with: ``version``; ``torch_built`` / ``torch_runtime`` (torch versions);
    ``cuda`` (kernels compiled), ``cuda_compiler``, ``cuda_archs``; ``cuda_available`` (a
    device is usable now); ``openmp`` (OpenMP version the CPU kernels were built with, ``None``
    if not), ``threads`` (``torch.get_num_threads()``), ``threads_used`` (threads that
    ``at::parallel_for`` really used inside the extension in a probe; ``1`` with ``threads > 1``
    would mean a silently serial build); ``compiler`` and ``build_type``.
    """
    from . import __version__

    ops = torch.ops.mta_ext
    threads = torch.get_num_threads()
    return {
        "version": __version__,
        "torch_built": _build_info.TORCH_VERSION,
        "torch_runtime": torch.__version__,
        "cuda": bool(_build_info.WITH_CUDA),
        "cuda_compiler": _build_info.CUDA_COMPILER_VERSION or None,
        "cuda_archs": _build_info.CUDA_ARCHS or None,
        "cuda_available": bool(_build_info.WITH_CUDA) and torch.cuda.is_available(),
        "simt": bool(getattr(_build_info, "WITH_SIMT", False)),
        "openmp": (_build_info.OPENMP_VERSION or None) if ops._compiled_with_openmp() else None,
        "threads": threads,
        "threads_used": int(ops._parallel_probe(4 * threads)),
        "compiler": _build_info.CXX_COMPILER,
        "build_type": _build_info.BUILD_TYPE,
    }
