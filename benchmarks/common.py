"""Shared benchmark machinery: timing, peak memory, machine limits, reporting.

Every benchmark times the extension and the reference on the same inputs in the same process,
reports median/min/max over >= 20 runs after warm-up, and the extra peak memory of one run.

CPU peak memory: Linux's peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs right
before one run and read after it, so "peak extra" is the high-water mark of resident memory
above what was resident before the run (inputs included in the baseline, not in the figure).
GPU: torch.cuda.reset_peak_memory_stats / max_memory_allocated minus the allocated baseline.

GPU times are CUDA events recorded around each run (the GPU time from the first launch to the
end of the last kernel), not wall clock around a synchronize, whose ~10-20 us per call would
dominate the short ops. Every case also makes one extra call of its ``mta_ext`` implementation
with host syncs forbidden (``torch.cuda.set_sync_debug_mode("error")``): the ``host_sync``
column then proves that the timed path never waits for the GPU (on a CPU the same call runs
with CPU tensors counted as device tensors, ``_pretend_device``, and counts the value checks and
host-metadata fallbacks that would each be a sync there).

``MTA_BENCH_RESULTS_DIR`` (environment) redirects every results file from
``benchmarks/results`` (the GPU check points it at the folder that comes back from the device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(os.environ.get("MTA_BENCH_RESULTS_DIR") or Path(__file__).parent / "results")
RESULTS_DIR = RESULTS_DIR.resolve()


try:
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _pin_malloc_policy() -> None:
    """Pin glibc's allocation policy (it otherwise adapts as the process runs): blocks up to
    32 MiB come from a heap that is kept, glibc's own steady state after warm-up and what a
    training process sees, so timings do not include page faults of fresh memory."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


_pin_malloc_policy()


# ---------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.check_output(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            text=True,
            stderr=subprocess.DEVNULL,
        ).strip()
    except Exception:
        return "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    import mta_ext

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "mta_ext": mta_ext.build_info(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 20,
    min_time: float = 0.0,
) -> dict[str, float]:
    """Median/min/max time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup``.

    CPU: wall clock per run. CUDA: a pair of CUDA events around each run, read after one
    synchronize at the end (no per-run host sync, whose cost would dominate short kernels).
    ``min_time`` (seconds) extends the runs until that much wall time has passed.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    cuda = device == "cuda" or str(device).startswith("cuda:")
    times: list[float] = []
    events: list[tuple[Any, Any]] = []
    t_start = time.perf_counter()
    while (len(times) + len(events)) < repeats or (time.perf_counter() - t_start) < min_time:
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
            if len(events) % 64 == 0:
                # bound the queue (and the memory of queued inputs) on long min_time runs
                end.synchronize()
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) * 1e-3 for s, e in events]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


def _simt_or_nothing() -> contextlib.AbstractContextManager:
    """The SIMT backend (the CUDA kernels run on CPU tensors) when this build has it: then the
    simulated check runs the CUDA front code, which counts every host-metadata fallback (the CPU
    kernels need no metadata and count only some)."""
    try:
        from mta_ext import _simt  # type: ignore[attr-defined]
    except ImportError:
        return contextlib.nullcontext()
    return _simt.enabled() if _simt.available() else contextlib.nullcontext()


def host_sync_check(fn: Callable[[], Any], *, device: str = "cpu") -> str:
    """Run ``fn()`` once and say whether it waited for the device (the path users run must not).

    CUDA: under ``torch.cuda.set_sync_debug_mode("error")``: ``"none"`` or ``"SYNC: <error>"``.
    CPU: with CPU tensors counted as device tensors (``torch.ops.mta_ext._pretend_device``), the
    mta_ext ops' value checks and host-metadata fallbacks (each a host sync on a device) are
    counted: ``"none (simulated)"`` or ``"SYNC (simulated): N value checks, M fallbacks"``.
    Any other exception is reported as ``"error: ..."``.
    """
    cuda = device == "cuda" or str(device).startswith("cuda:")
    try:
        if cuda:
            torch.cuda.synchronize()
            prev = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(prev)
            torch.cuda.synchronize()
            return "none"
        ops = torch.ops.mta_ext
        if not hasattr(ops, "_pretend_device"):
            return "-"
        ops._reset_sync_counters()
        ops._pretend_device(True)
        try:
            with _simt_or_nothing():
                fn()
        finally:
            ops._pretend_device(False)
        checks, fallbacks = ops._sync_counters()
        if checks or fallbacks:
            return f"SYNC (simulated): {checks} value checks, {fallbacks} fallbacks"
        return "none (simulated)"
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if cuda and "synchroniz" in msg.lower():
            return f"SYNC: {msg[:120]}"
        return f"error: {type(exc).__name__}: {msg[:120]}"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn: Callable[[], Any], *, device: str = "cpu") -> int | None:
    """Peak memory above the pre-run level during one ``fn()`` (None if not measurable)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    if _LIBC is not None:
        # Hand the free heap pages back to the OS (their address ranges stay in the heap), so
        # that every page the run touches, reused or new, raises the resident high-water mark.
        _LIBC.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_kib("VmRSS")
    fn()
    return max(0, (_rss_kib("VmHWM") - base) * 1024)


# ---------------------------------------------------------------- machine limits
def _is_cuda(device: str) -> bool:
    return device == "cuda" or str(device).startswith("cuda:")


def copy_bandwidth(device: str = "cpu", nbytes: int | None = None) -> float:
    """Bytes/s of a large tensor copy (read + write counted), median of 10.

    ``nbytes`` per buffer defaults to 256 MiB on a CPU and 1 GiB on a GPU (far above its L2).
    """
    nbytes = nbytes or (2**30 if _is_cuda(device) else 256 * 2**20)
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=2, repeats=10)
    return 2 * nbytes / t["median_s"]


def matmul_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None
) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype``, median of 10 (two input pairs alternate).

    ``n`` defaults to 1024 on a CPU and 8192 on a GPU (large enough to reach the tensor-core
    rate: 2 n^3 = 1.1 TFLOP per call).
    """
    n = n or (8192 if _is_cuda(device) else 1024)
    pairs = [
        tuple(torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)) for _ in range(2)
    ]
    i = [0]

    def run() -> None:
        a, b = pairs[i[0] % 2]
        i[0] += 1
        torch.mm(a, b)

    t = time_fn(run, device=device, warmup=2, repeats=10)
    return 2 * n**3 / t["median_s"]


# ---------------------------------------------------------------- cases and reports
# Columns of the kernels-vs-reference table (bench_ops prints it, report.py renders it).
OPS_COLUMNS = [
    "op",
    "tokens",
    "B",
    "T",
    "N_b",
    "D",
    "Ds",
    "Dt",
    "dtype",
    "mta_ext_median_ms",
    "reference_median_ms",
    "speedup_vs_reference",
    "floor_ms",
    "x_of_floor",
    "mta_ext_peak_extra_mib",
    "reference_peak_extra_mib",
    "host_sync",
]


@dataclasses.dataclass
class Case:
    """One benchmark configuration; ``make(impl)`` builds inputs and returns the timed closure.

    ``impl`` is one of ``impls`` (e.g. "mta_ext", "reference"). ``floor_bytes``, when given, is
    the minimum traffic of the op (for the fraction-of-copy-bandwidth column). ``sync_check``:
    the impl whose one extra call runs with host syncs forbidden (:func:`host_sync_check`,
    the ``host_sync`` column), ``None`` for none; by default ``"mta_ext"`` when it is an impl.
    """

    op: str
    params: dict[str, Any]
    make: Callable[[str], Callable[[], Any]]
    impls: tuple[str, ...] = ("mta_ext", "reference")
    floor_bytes: int | None = None
    sync_check: str | None = "mta_ext"


def linear_sweeps(
    case: Callable[[int, int], Case], width: int, quick: bool
) -> dict[str, list[Case]]:
    """The scaling sweeps of an op linear in its rows and its width: ``case(rows, D)`` over
    1k-16k rows at ``width``, then over D = 64-4096 at 4,096 rows (``quick``: two small points
    each)."""
    rows = [512, 1024] if quick else [1024, 2048, 4096, 8192, 16384]
    dims = [64, 256] if quick else [64, 256, 576, 1024, 2048, 4096]
    return {
        "tokens": [case(t, width) for t in rows],
        "D": [case(1024 if quick else 4096, d) for d in dims],
    }


def run_cases(cases: list[Case], *, device: str, repeats: int, warmup: int) -> list[dict]:
    rows = []
    for case in cases:
        row: dict[str, Any] = {"op": case.op, **case.params, "device": device}
        for impl in case.impls:
            fn = case.make(impl)
            t = time_fn(fn, device=device, warmup=warmup, repeats=repeats)
            row[f"{impl}_median_ms"] = t["median_s"] * 1e3
            row[f"{impl}_min_ms"] = t["min_s"] * 1e3
            row[f"{impl}_max_ms"] = t["max_s"] * 1e3
            row[f"{impl}_runs"] = t["runs"]
            row[f"{impl}_peak_extra_mib"] = _mib(peak_extra_bytes(fn, device=device))
            if impl == case.sync_check:
                row["host_sync"] = host_sync_check(fn, device=device)
            del fn
            gc.collect()
        if len(case.impls) >= 2:
            a, b = case.impls[0], case.impls[1]
            row[f"speedup_vs_{b}"] = row[f"{b}_median_ms"] / row[f"{a}_median_ms"]
        if case.floor_bytes is not None:
            row["floor_mib"] = case.floor_bytes / 2**20
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _mib(b: int | None) -> float | None:
    return None if b is None else b / 2**20


def format_row(row: dict) -> str:
    keys = [k for k in row if not k.endswith(("_min_ms", "_max_ms", "_runs"))]
    parts = []
    for k in keys:
        v = row[k]
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)


def machine_line(payload: dict) -> str:
    """One line naming where a results payload was measured (its ``machine`` record)."""
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads"
    return f"{where}; torch {m['torch']}; commit {m['git_commit']}; {m['date']}"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_results(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path
