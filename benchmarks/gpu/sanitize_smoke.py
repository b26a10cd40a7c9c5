"""Run every CUDA op once on small ragged inputs (forward and backward), for compute-sanitizer.

    compute-sanitizer --tool memcheck python -m benchmarks.gpu.sanitize_smoke [--device cuda]

Small on purpose: memcheck/racecheck slow kernels down by 10-100x. Covers, per dtype (fp16,
bf16, fp32, fp64): each op with and without its host metadata (``num_incidences`` /
``plan_sizes``, the path users run and the raw-op fallback), the scalar path (D = 7, rows not
a multiple of the vector width), the vector path and several column chunks; then the
wrong-metadata cases, whose kernels must stay inside their buffers whatever the host ints say:

* relational_loss ``cu = [0, 64]`` with ``plan_sizes = [1, 1, 4, 2]`` (far too small),
  ``cu = [0, 2]`` with ``[2, 1, 4, 2]`` (one tile too many), ``cu = [0, 130]`` with
  ``[0, 0, 0, 0]`` (nothing planned);
* segment_pool with ``num_incidences`` smaller than the truth (forward and backward);
* row_cosine with ``rows`` outside ``[0, M)`` (device data the default path never checks).

Exits non-zero if an op raises on valid input or returns a non-finite value there, or if a
wrong-metadata case breaks the contract of the CUDA kernels (docs/DESIGN.md §5): relational_loss
returns NaN loss and gradients, segment_pool's backward NaN gradients (its forward does not use
num_incidences: finite), row_cosine NaN for the rows whose index is out of range (forward and
backward). The sanitizer judges the memory accesses.
``--device cpu`` (the GPU check's dry run) runs the same calls on CPU tensors through the SIMT
backend when this build has it (the CUDA kernels on the CPU), else with CPU tensors counted as
device tensors (no value checks, as on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import mta_ext  # noqa: F401  (loads the ops)
from mta_ext._layout import relational_plan_sizes

ops = torch.ops.mta_ext


def _device_semantics(dev: torch.device) -> contextlib.AbstractContextManager:
    """On a CPU: the SIMT backend when available, else ``_pretend_device`` (no value checks)."""
    if dev.type != "cpu":
        return contextlib.nullcontext()
    try:
        from mta_ext import _simt  # type: ignore[attr-defined]

        if _simt.available():
            return _simt.enabled()
    except ImportError:
        pass

    @contextlib.contextmanager
    def pretend():
        ops._pretend_device(True)
        try:
            yield
        finally:
            ops._pretend_device(False)

    return pretend()


def _simt_active() -> bool:
    from mta_ext import _simt

    return _simt.available() and _simt.active()


def _incid(r: torch.Tensor) -> int:
    return int((r[:, 1] - r[:, 0]).clamp_min(0).sum())  # host sync: CPU only


def valid_cases(dev: torch.device) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for d in (7, 64, 136):  # scalar path (unaligned rows), vector path, two column chunks
            h = torch.randn(50, d, device=dev, dtype=dt)
            r_cpu = torch.tensor([[0, 3], [2, 9], [9, 9], [0, 50], [40, 50], [5, 6]])
            r, p = r_cpu.to(dev), _incid(r_cpu)
            w = torch.rand(50, device=dev)
            for meta in (p, None):  # host ints (the users' path), then the raw-op fallback
                out = ops.segment_pool(h, r, w, meta)
                outs += [out, ops.segment_pool_backward(out, r, w, 50, meta)]
            outs.append(ops.segment_pool(h, r, None, p))
        if hasattr(ops, "token_salience"):
            for d in (7, 33):
                h = torch.randn(3, 70, d, device=dev, dtype=dt)
                m = torch.ones(3, 70, dtype=torch.bool, device=dev)
                m[1, 50:] = False
                m[2, 1:] = False
                outs.append(ops.token_salience(h, m, 0))
        if hasattr(ops, "row_cosine"):
            for d in (7, 64, 136):
                p_ = torch.randn(9, d, device=dev, dtype=dt)
                h = torch.randn(12, d, device=dev, dtype=dt)
                rows = torch.tensor([0, 11, 3, 3, 7, 1, 0, 5, 10], device=dev)  # repeats too
                for r_, hh in ((rows, h), (None, h[:9])):
                    cos, n_p, n_h = ops.row_cosine(p_, hh, r_, 1e-5)
                    g = torch.randn_like(cos)
                    outs += [cos, n_p, n_h]
                    outs += list(
                        ops.row_cosine_backward(g, p_, hh, r_, n_p, n_h, cos, 1e-5, [True, True])
                    )
        if hasattr(ops, "relational_loss"):
            cu_cpu = torch.tensor([0, 1, 67, 70, 200])
            cu, plan = cu_cpu.to(dev), relational_plan_sizes(cu_cpu)
            for ds, dtt in ((40, 24), (7, 7)):  # vector and scalar widths
                us = torch.randn(200, ds, device=dev, dtype=dt)
                ut = torch.randn(200, dtt, device=dev, dtype=dt)
                w = torch.rand(200, device=dev)
                one = torch.ones((), device=dev)
                for meta in (plan, None):
                    outs.append(ops.relational_loss(us, ut, w, cu, meta))
                    outs += list(ops.relational_loss_backward(one, us, ut, w, cu, True, True, meta))
                    if hasattr(ops, "relational_loss_and_grad"):
                        outs += list(ops.relational_loss_and_grad(us, ut, w, cu, True, False, meta))
    return outs


def wrong_metadata_cases(dev: torch.device, strict: bool) -> list[str]:
    """Runs each case and returns those that broke the contract (``strict``: the real CUDA
    kernels run, on a GPU or the SIMT backend); the sanitizer checks the memory accesses."""
    broken: list[str] = []

    def run(name: str, want: str, op, *args) -> None:
        # Named before the call: if a case crashes the process, the log says which.
        print(f"sanitize_smoke: wrong metadata: {name} ...", flush=True)
        try:
            out = op(*args)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            finite = all(bool(torch.isfinite(o).all()) for o in outs)
            what = "finite" if finite else "non-finite (NaN/inf)"
        except Exception as exc:  # an error is a visible answer too; the sanitizer judges memory
            msg = str(exc).splitlines()[0] if str(exc) else ""
            what = f"raised {type(exc).__name__}: {msg[:100]}"
        ok = not strict or what.startswith(want)
        if not ok:
            broken.append(name)
        print(
            f"sanitize_smoke: wrong metadata: {name}: {what}{'' if ok else ' (want ' + want + ')'}",
            flush=True,
        )

    g = torch.Generator().manual_seed(3)
    for cu_list, plan in (([0, 64], [1, 1, 4, 2]), ([0, 2], [2, 1, 4, 2]), ([0, 130], [0] * 4)):
        n = cu_list[-1]
        cu = torch.tensor(cu_list, device=dev)
        us = torch.randn(n, 40, generator=g).to(dev)
        ut = torch.randn(n, 24, generator=g).to(dev)
        w = torch.rand(n, generator=g).to(dev)
        one = torch.ones((), device=dev)
        name = f"relational_loss cu={cu_list} plan_sizes={plan}"
        nan = "non-finite"
        run(name + " fwd", nan, ops.relational_loss, us, ut, w, cu, plan)
        run(name + " fused", nan, ops.relational_loss_and_grad, us, ut, w, cu, True, True, plan)
        run(name + " bwd", nan, ops.relational_loss_backward, one, us, ut, w, cu, True, True, plan)
    h = torch.randn(50, 64, generator=g).to(dev)
    r_cpu = torch.tensor([[0, 30], [10, 50], [5, 6]])
    r, p = r_cpu.to(dev), _incid(r_cpu)
    w = torch.rand(50, generator=g).to(dev)
    go = torch.randn(3, 64, generator=g).to(dev)
    for bad in (p - 5, 1, 0):
        name = f"segment_pool num_incidences={bad} (truth {p})"
        run(name + " fwd", "finite", ops.segment_pool, h, r, w, bad)
        run(name + " bwd", "non-finite", ops.segment_pool_backward, go, r, w, 50, bad)
    if hasattr(ops, "row_cosine"):
        p_ = torch.randn(4, 64, generator=g).to(dev)
        h = torch.randn(6, 64, generator=g).to(dev)
        for bad_rows in ([0, 6, 2, 1], [-1, 0, 1, 2], [0, 1, 2, 1 << 40]):
            rows = torch.tensor(bad_rows, device=dev)
            name = f"row_cosine rows={bad_rows} (M = 6)"
            run(name + " fwd", "non-finite", ops.row_cosine, p_, h, rows, 1e-5)
            cos = torch.rand(4, generator=g).to(dev)
            norms = torch.ones(4, device=dev)
            mask = [True, True]
            args = (cos, p_, h, rows, norms, norms, cos, 1e-5, mask)
            run(name + " bwd", "non-finite", ops.row_cosine_backward, *args)
    return broken


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-wrong-metadata", action="store_true", help="valid inputs only")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    with _device_semantics(dev):
        outs = valid_cases(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        bad = [i for i, o in enumerate(outs) if not torch.isfinite(o).all()]
        if bad:
            print(f"sanitize_smoke: non-finite outputs on valid input at {bad}", file=sys.stderr)
        print(f"sanitize_smoke: {len(outs)} outputs on valid input, {len(bad)} non-finite")
        sys.stdout.flush()
        broken: list[str] = []
        if not a.no_wrong_metadata:
            strict = dev.type == "cuda" or _simt_active()
            broken = wrong_metadata_cases(dev, strict)  # prints one line per case as it goes
            print(f"sanitize_smoke: wrong metadata: {len(broken)} cases broke the contract")
    return 1 if bad or broken else 0


if __name__ == "__main__":
    sys.exit(main())
