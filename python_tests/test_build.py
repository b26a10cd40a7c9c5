"""The installed extension: build info, OpenMP really parallel, version guard."""

from __future__ import annotations

import torch

import mta_ext


def test_build_info_fields():
    info = mta_ext.build_info()
    assert info["version"] == mta_ext.__version__
    assert info["torch_built"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    assert info["threads"] == torch.get_num_threads()
    if info["cuda"]:
        assert info["cuda_archs"]


def test_openmp_really_parallelises():
    """A build without -fopenmp makes at::parallel_for silently serial: catch it."""
    info = mta_ext.build_info()
    assert info["openmp"] is not None, "the extension was compiled without OpenMP"
    if torch.get_num_threads() > 1:
        assert info["threads_used"] > 1, info


def test_ops_are_registered_with_the_dispatcher():
    assert hasattr(torch.ops.mta_ext, "segment_pool")
    assert hasattr(torch.ops.mta_ext, "segment_pool_backward")
