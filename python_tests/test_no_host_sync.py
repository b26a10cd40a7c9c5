"""The default path never waits for the host (without a GPU: static and simulated proofs).

1. Static: no sync primitive in the CUDA sources (csrc/cuda/**, the front files and shared
   headers they use) nor in structural_loss's Python path, except on lines marked
   ``host sync: debug mode | CPU only | raw-op fallback``.
2. Simulated: with CPU tensors counted as device tensors (``_pretend_device``), a full
   structural_loss forward + backward on a real ``Alignment`` runs no value check and needs no
   host-metadata fallback; a plain-dict layout and the debug mode do (the counters can fail).
3. The host tile plan (the code the device runs) against an independent Python plan.
The GPU proofs (sync debug mode "error", CUDA graphs, reduce-overhead) are in test_gpu_sync.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sync_helpers import SCHEDULE, hidden_states, real_alignment

import mta_ext
from mta_ext._layout import LayoutHostInfo, layout_host_info, relational_plan_sizes
from mta_ext.alignment import UnitLayout

ROOT = Path(__file__).resolve().parents[1]
_ops = torch.ops.mta_ext

# ------------------------------------------------------------------ 1. static scan

CPP_PRIMITIVES = [
    r"\.item\s*<",
    r"\.item\s*\(",
    r"\.cpu\s*\(",
    r"\.tolist\s*\(",
    r"\bnonzero\s*\(",
    r"\bcudaMemcpy(?!Async)\w*\s*\(",
    r"\bcudaDeviceSynchronize\b",
    r"\bcudaStreamSynchronize\b",
    r"\.to\s*\(\s*at::kCPU",
    r"\.to\s*\(\s*(?:c10|at)::Device\s*\(\s*(?:c10|at)::kCPU",
    r"\bsynchronize\s*\(",
]
PY_PRIMITIVES = [
    r"\.item\s*\(",
    r"\.cpu\s*\(",
    r"\.tolist\s*\(",
    r"\bnonzero\s*\(",
    r"\.to\s*\(\s*[\"']cpu[\"']",
    r"torch\.cuda\.synchronize",
    r"\.numpy\s*\(",
]
ALLOWED = ("debug mode", "CPU only", "raw-op fallback")
MARK = re.compile(r"host sync: (debug mode|CPU only|raw-op fallback)")


def cuda_reachable_sources() -> list[Path]:
    """The C++ a CUDA call runs through: CUDA kernels, front files, shared headers."""
    files = sorted((ROOT / "csrc" / "cuda").glob("*.cu*")) + sorted(
        (ROOT / "csrc" / "cuda").glob("*.h")
    )
    files += sorted((ROOT / "csrc" / "ops").glob("*.cpp")) + sorted(
        (ROOT / "csrc" / "ops").glob("*.h")
    )
    files += sorted((ROOT / "csrc" / "common").glob("*"))
    return files


def python_sources() -> list[Path]:
    """structural_loss's Python path."""
    return [
        ROOT / "mta_ext" / "losses.py",
        ROOT / "mta_ext" / "_layout.py",
        *sorted((ROOT / "mta_ext" / "ops").glob("*.py")),
    ]


def _strip_comment(line: str, cpp: bool) -> str:
    if cpp:
        return line.split("//", 1)[0]
    return line.split("#", 1)[0]


def find_syncs(text: str, primitives: list[str], cpp: bool) -> list[tuple[int, str]]:
    """(line number, line) of every unmarked sync primitive in ``text``.

    A primitive is allowed on a line that carries the marker, or whose previous line is a
    comment carrying it. Comments are not scanned.
    """
    pats = [re.compile(p) for p in primitives]
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        code = _strip_comment(line, cpp)
        if not any(p.search(code) for p in pats):
            continue
        prev = lines[i - 1].strip() if i else ""
        prev_is_comment = prev.startswith("//" if cpp else "#")
        if MARK.search(line) or (prev_is_comment and MARK.search(prev)):
            continue
        out.append((i + 1, line.strip()))
    return out


def test_scanner_catches_every_primitive():
    # The scan must be able to fail: each primitive, unmarked, is reported; marked, it is not.
    cpp = [
        "auto x = t.item<int64_t>();",
        "auto c = cu.cpu();",
        "cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost);",
        "cudaDeviceSynchronize();",
        "cudaStreamSynchronize(stream);",
        "auto i = bad.nonzero();",
        "auto h = t.to(at::kCPU);",
        "auto v = t.tolist();",
    ]
    for line in cpp:
        assert find_syncs(line, CPP_PRIMITIVES, cpp=True), line
        assert not find_syncs(line + "  // host sync: debug mode", CPP_PRIMITIVES, cpp=True)
    assert not find_syncs("cudaMemcpyAsync(d, s, n, k, stream);", CPP_PRIMITIVES, cpp=True)
    assert not find_syncs("// t.item<int>() in a comment", CPP_PRIMITIVES, cpp=True)
    assert find_syncs("x = t.item<int>();  // host sync: because", CPP_PRIMITIVES, cpp=True)
    py = [
        "n = t.item()",
        "c = t.cpu()",
        "v = t.tolist()",
        "i = t.nonzero()",
        'h = t.to("cpu")',
        "torch.cuda.synchronize()",
    ]
    for line in py:
        assert find_syncs(line, PY_PRIMITIVES, cpp=False), line
        assert not find_syncs(line + "  # host sync: CPU only", PY_PRIMITIVES, cpp=False)


def test_no_unmarked_sync_in_cuda_sources():
    files = cuda_reachable_sources()
    assert any(f.suffix == ".cu" for f in files) and len(files) > 10
    bad = {
        str(f.relative_to(ROOT)): hits
        for f in files
        if (hits := find_syncs(f.read_text(), CPP_PRIMITIVES, cpp=True))
    }
    assert not bad, f"host syncs outside the debug mode / CPU-only / raw-op fallback: {bad}"


def test_no_unmarked_sync_in_structural_loss_python_path():
    bad = {
        str(f.relative_to(ROOT)): hits
        for f in python_sources()
        if (hits := find_syncs(f.read_text(), PY_PRIMITIVES, cpp=False))
    }
    assert not bad, f"host syncs in structural_loss's Python path: {bad}"


def test_cuda_kernel_files_have_no_sync_at_all():
    # The kernel files themselves (csrc/cuda) take no sync even in the debug mode: the value
    # checks and the raw-op fallbacks live in the front files.
    for f in sorted((ROOT / "csrc" / "cuda").glob("*")):
        assert not MARK.search(f.read_text()), f
        assert not find_syncs(f.read_text(), CPP_PRIMITIVES, cpp=True), f


# ------------------------------------------------------------------ 2. simulated device path


@pytest.fixture
def pretend_device():
    """CPU tensors count as device tensors in the ops (value checks skipped, missing host
    metadata counted as a fallback)."""
    was = mta_ext.debug_enabled()
    mta_ext.set_debug(False)
    _ops._pretend_device(True)
    _ops._reset_sync_counters()
    try:
        yield
    finally:
        _ops._pretend_device(False)
        mta_ext.set_debug(was)


def _step(al, projectors=True, weighting="salience"):
    s_hs, t_hs = hidden_states(al)
    projs = None
    if projectors:
        torch.manual_seed(0)
        projs = [torch.nn.Linear(16, 24) for _ in SCHEDULE]
    loss = mta_ext.structural_loss(s_hs, t_hs, al, SCHEDULE, projectors=projs, weighting=weighting)
    loss.backward()
    return loss.detach(), [h.grad for h in s_hs]


def _counters() -> tuple[int, int]:
    checks, fallbacks = _ops._sync_counters()
    return checks, fallbacks


@pytest.mark.parametrize("weighting", ["salience", "uniform"])
def test_structural_loss_default_path_takes_no_value_check_nor_fallback(pretend_device, weighting):
    al = real_alignment()
    assert all(isinstance(lay.host, LayoutHostInfo) for lay in al.units.values())
    assert all(lay.num_units > 0 for lay in al.units.values())
    loss, grads = _step(al, weighting=weighting)
    assert torch.isfinite(loss) and loss > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert _counters() == (0, 0)


def test_mtaloss_default_path_takes_no_value_check_nor_fallback(pretend_device):
    al = real_alignment()
    s_hs, t_hs = hidden_states(al)
    loss_fn = mta_ext.MTALoss(SCHEDULE, student_hidden_size=16, teacher_hidden_size=24)
    loss_fn(s_hs, t_hs, al).backward()
    assert _counters() == (0, 0)


def test_plain_dict_layouts_fall_back_and_are_counted(pretend_device):
    # Without host metadata the ops compute it: each is a counted (documented) sync.
    al = real_alignment()
    plain = {
        g: {k: getattr(lay, k) for k in ("cu_units", "teacher_ranges", "student_ranges")}
        for g, lay in al.units.items()
    }
    al_plain = mta_ext.Alignment(al.texts, al.teacher, al.student, plain)
    ref, ref_grads = _step(al, projectors=False)
    _ops._reset_sync_counters()
    loss, grads = _step(al_plain, projectors=False)
    checks, fallbacks = _counters()
    assert checks == 0 and fallbacks > 0
    assert torch.equal(loss, ref)  # same result, only slower
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True) if a is not None)


def test_debug_mode_runs_the_value_checks(pretend_device):
    mta_ext.set_debug(True)
    _step(real_alignment())
    checks, fallbacks = _counters()
    assert checks > 0 and fallbacks == 0


def test_cpu_tensors_are_value_checked():
    # On real CPU tensors the checks are free and always run (the counter sees them).
    _ops._reset_sync_counters()
    _step(real_alignment())
    checks, fallbacks = _counters()
    assert checks > 0 and fallbacks == 0


def test_debug_flag_api_and_environment(tmp_path):
    was = mta_ext.debug_enabled()
    try:
        mta_ext.set_debug(True)
        assert mta_ext.debug_enabled()
        mta_ext.set_debug(False)
        assert not mta_ext.debug_enabled()
    finally:
        mta_ext.set_debug(was)
    code = "import mta_ext; print(mta_ext.debug_enabled())"
    # The same mta_ext this process imported (an in-place build or the installed package).
    pkg_parent = str(Path(mta_ext.__file__).resolve().parents[1])
    path = os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")])
    for val, want in (("1", "True"), ("0", "False")):
        env = dict(os.environ, MTA_EXT_DEBUG=val, PYTHONPATH=path)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want


def test_wrong_host_metadata_is_caught_where_values_are_checked():
    al = real_alignment()
    lay = al.units["word"]
    n = lay.num_units
    u = torch.randn(n, 8)
    w = torch.rand(n)
    plan = list(lay.host.plan_sizes)
    mta_ext.relational_loss(u, u.flip(1), w, lay.cu_units, plan_sizes=plan)
    bad = [plan[0] + 1, *plan[1:]]
    with pytest.raises(ValueError, match="plan_sizes"):
        mta_ext.relational_loss(u, u.flip(1), w, lay.cu_units, plan_sizes=bad)
    with pytest.raises(ValueError, match="plan_sizes must be"):
        mta_ext.relational_loss(u, u.flip(1), w, lay.cu_units, plan_sizes=plan[:3])
    M = al.teacher["input_ids"].numel()
    h = torch.randn(M, 4, requires_grad=True)
    inc = lay.host.teacher_incidences
    mta_ext.segment_pool(h, lay.teacher_ranges, num_incidences=inc).sum().backward()
    with pytest.raises(ValueError, match="num_incidences"):
        mta_ext.segment_pool(h, lay.teacher_ranges, num_incidences=inc + 1)
    with pytest.raises(ValueError, match="num_incidences"):
        mta_ext.segment_pool(h, lay.teacher_ranges, num_incidences=inc - 1).sum().backward()


def test_unit_layout_validates_once_and_keeps_host_info_across_to():
    lay = real_alignment().units["phrase"]
    info = lay.host
    assert info == layout_host_info(lay.cu_units, lay.teacher_ranges, lay.student_ranges)
    moved = lay.to("meta")
    assert moved.host is info and moved.cu_units.device.type == "meta"
    assert (
        UnitLayout(moved.cu_units, moved.spans, moved.teacher_ranges, moved.student_ranges).host
        is None
    )
    cu = torch.tensor([0, 2, 1, 3])
    r = torch.tensor([[0, 1], [1, 2], [2, 3]])
    with pytest.raises(ValueError, match="example 1"):
        UnitLayout(cu, r, r, r)
    with pytest.raises(ValueError, match=r"teacher_ranges\[1\]"):
        UnitLayout(torch.tensor([0, 3]), r, torch.tensor([[0, 1], [2, 1], [2, 3]]), r)


def test_structural_loss_checks_range_bounds_on_the_host():
    al = real_alignment()
    s_hs, t_hs = hidden_states(al)
    short = tuple(h[:, :-3] for h in t_hs)  # fewer teacher tokens than the layout reaches
    mask = torch.ones(short[0].shape[:2], dtype=torch.long)
    with pytest.raises(ValueError, match="teacher_ranges reach token"):
        mta_ext.structural_loss(s_hs, short, al, SCHEDULE, teacher_attention_mask=mask)


# ------------------------------------------------------------------ 3. the tile plan


def _plan_reference(cu: list[int], N: int):
    tiles, rows = [], []
    moff = roff = 0
    for b in range(len(cu) - 1):
        a = min(max(cu[b], 0), N)
        e = min(max(cu[b + 1], a), N)
        n = e - a
        if n <= 0:
            continue
        tb = -(-n // 64)
        if n >= 2:
            tiles += [[a, n, ti, tj, moff, roff, tb, 0] for ti in range(tb) for tj in range(ti, tb)]
        rows += [[a, n, ti, 0, moff, roff, tb, 0] for ti in range(tb)]
        if n >= 2:
            moff += n * n
            roff += n * tb
    return tiles, rows, [len(tiles), len(rows), moff, roff]


@pytest.mark.parametrize("seed", range(6))
def test_tile_plan_matches_an_independent_reference(seed):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(0, 9, (1,), generator=g))
    counts = torch.randint(0, 200, (B,), generator=g) * (torch.rand(B, generator=g) < 0.8)
    counts[: min(B, 2)] = torch.tensor([1, 0])[: min(B, 2)]
    cu = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    N = int(cu[-1])
    tiles, rows, sizes = _ops._relational_loss_plan(cu, N)
    rt, rr, rs = _plan_reference(cu.tolist(), N)
    assert sizes.tolist() == rs
    assert tiles.tolist() == rt and rows.tolist() == rr
    assert list(relational_plan_sizes(cu)) == rs  # the host sizes a UnitLayout keeps


def test_tile_plan_clamps_an_unvalidated_layout():
    # The device builds the plan from unvalidated device values: examples are clamped into
    # [0, N], so no tile can address a unit outside the tensors.
    cu = torch.tensor([0, 5, 3, 100])
    tiles, rows, sizes = _ops._relational_loss_plan(cu, 10)
    rt, rr, rs = _plan_reference(cu.tolist(), 10)
    assert sizes.tolist() == rs and tiles.tolist() == rt and rows.tolist() == rr
    assert all(r[0] + r[1] <= 10 for r in tiles.tolist() + rows.tolist())


def test_opcheck_with_host_metadata():
    # The schemas' optional host ints go through the fake kernels and autograd formulas.
    lay = real_alignment().units["phrase"]
    n = lay.num_units
    g = torch.Generator().manual_seed(0)
    us = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ut = torch.randn(n, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    plan = list(lay.host.plan_sizes)
    torch.library.opcheck(_ops.relational_loss, (us, ut, w, lay.cu_units, plan))
    torch.library.opcheck(
        _ops.relational_loss_and_grad, (us, ut, w, lay.cu_units, True, True, plan)
    )
    M = int(lay.host.teacher_max_end)
    h = torch.randn(M, 4, generator=g, dtype=torch.float64, requires_grad=True)
    inc = lay.host.teacher_incidences
    torch.library.opcheck(_ops.segment_pool, (h, lay.teacher_ranges, None, inc))
    torch.autograd.gradcheck(
        lambda x: mta_ext.segment_pool(x, lay.teacher_ranges, num_incidences=inc), (h,)
    )
    torch.autograd.gradcheck(
        lambda a, b: mta_ext.relational_loss(a, b, w, lay.cu_units, plan_sizes=plan), (us, ut)
    )
