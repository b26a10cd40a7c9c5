"""The installed extension: build info, OpenMP really parallel, version guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from op_registry import OPS

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
    for name in ALL_OPS:
        assert hasattr(torch.ops.mta_ext, name), name


# Every public schema of every op of the registry.
ALL_OPS = [schema for op in OPS for schema in op.schemas]


def test_cuda_build_registers_every_op():
    """A CUDA build registers a CUDA kernel for every public op: a missing registration is a
    failure, never a skip (the CUDA compile check runs this under the CUDA torch)."""
    registered = {
        n.split("::", 1)[1]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("mta_ext::") and not n.startswith("mta_ext::_")
    }
    assert set(ALL_OPS) <= registered, sorted(set(ALL_OPS) - registered)
    # ... and the registry knows every registered public op (a new op is added there).
    assert registered <= set(ALL_OPS), sorted(registered - set(ALL_OPS))
    for name in sorted(registered):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{name}", "CPU"), name
    if not mta_ext.build_info()["cuda"]:
        return  # a CPU-only build has no CUDA kernels to check
    missing = [
        n
        for n in sorted(registered)
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{n}", "CUDA")
    ]
    assert not missing, f"ops without a CUDA kernel: {missing}"


def test_import_does_not_load_the_oracle(tmp_path):
    """``import mta_ext`` leaves the pure-PyTorch oracle (``mta_ext.reference``) unimported; the
    attribute imports it on first use."""
    code = (
        "import sys, mta_ext; assert 'mta_ext.reference' not in sys.modules, 'eager'; "
        "mta_ext.reference.segment_pool; assert 'mta_ext.reference' in sys.modules"
    )
    pkg_parent = str(Path(mta_ext.__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
