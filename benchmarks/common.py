"""Shared benchmark machinery: timing, peak memory, machine limits, reporting.

Every benchmark times the extension and the reference on the same inputs in the same process,
reports median/min/max over >= 20 runs after warm-up, and the extra peak memory of one run.

CPU peak memory: Linux's peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs right
before one run and read after it, so "peak extra" is the high-water mark of resident memory
above what was resident before the run (inputs included in the baseline, not in the figure).
GPU: torch.cuda.reset_peak_memory_stats / max_memory_allocated minus the allocated baseline.
"""

from __future__ import annotations

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

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    """Median/min/max wall time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


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
def copy_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20) -> float:
    """Bytes/s of a large tensor copy (read + write counted), median of 10."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=2, repeats=10)
    return 2 * nbytes / t["median_s"]


def matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, median of 10."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device=device, warmup=2, repeats=10)
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
]


@dataclasses.dataclass
class Case:
    """One benchmark configuration; ``make(impl)`` builds inputs and returns the timed closure.

    ``impl`` is one of ``impls`` (e.g. "mta_ext", "reference"). ``floor_bytes``, when given, is
    the minimum traffic of the op (for the fraction-of-copy-bandwidth column).
    """

    op: str
    params: dict[str, Any]
    make: Callable[[str], Callable[[], Any]]
    impls: tuple[str, ...] = ("mta_ext", "reference")
    floor_bytes: int | None = None


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
