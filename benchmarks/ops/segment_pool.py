"""segment_pool forward+backward: mta_ext vs the reference.

The timed path is the one ``structural_loss`` runs: ``num_incidences`` (the CSR size of the
backward, host metadata) is computed once per input set on the CPU, before the tensors move to
the device, and passed to every call, so a CUDA call never waits for the host. One labelled row
per run (``[raw-op fallback]``) times the call without it: one host sync per backward on CUDA.
"""

from __future__ import annotations

import torch

import mta_ext
from benchmarks.common import Case, linear_sweeps
from mta_ext import reference


def make_units(num_tokens: int, num_units: int, gen: torch.Generator) -> torch.Tensor:
    """Word-like units: disjoint runs of 1-3 tokens with gaps, as real word units look
    (N = 0.4 * tokens and 2 tokens per unit on average: ~80% of tokens in a unit)."""
    lens = torch.randint(1, 4, (num_units,), generator=gen)
    total = int(lens.sum())
    slack = max(0, num_tokens - total)
    gaps = torch.zeros(num_units, dtype=torch.long)
    if slack:
        gaps = torch.multinomial(torch.ones(num_units), slack, replacement=True, generator=gen)
        gaps = torch.bincount(gaps, minlength=num_units)
    starts = torch.cumsum(gaps + lens, 0) - lens
    ends = torch.clamp(starts + lens, max=num_tokens)
    starts = torch.clamp(starts, max=num_tokens)
    return torch.stack([starts, ends], 1)


def num_incidences(ranges: torch.Tensor) -> int:
    """``sum_k max(e_k - s_k, 0)`` of CPU ``ranges [N, 2]``: segment_pool's host metadata."""
    # host sync: CPU only (the benchmark's own CPU tensors, once per input set)
    return int((ranges[:, 1] - ranges[:, 0]).clamp_min(0).sum())


def _case(tokens: int, d: int, device: str, dtype=torch.float32, *, fallback: bool = False) -> Case:
    """fwd+bwd at ``tokens`` rows of width ``d``, N = 0.4 * tokens word-like units.

    ``fallback``: call without ``num_incidences`` (the raw-op fallback, labelled in ``op``).
    """
    n = int(0.4 * tokens)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, d, generator=gen).to(dtype).to(device)
    ranges_cpu = make_units(tokens, n, gen)
    meta = {} if fallback else {"num_incidences": num_incidences(ranges_cpu)}
    ranges = ranges_cpu.to(device)
    weights = torch.rand(tokens, generator=gen).to(device)
    grad = torch.randn(n, d, generator=gen).to(dtype).to(device)
    esize = hidden.element_size()
    # The memory floor: hidden read once, out written once, grad_out read once, grad_hidden
    # written once.
    floor = 2 * tokens * d * esize + 2 * n * d * esize

    def make(impl):
        h = hidden.clone().requires_grad_()
        if impl == "mta_ext":

            def run():
                h.grad = None
                mta_ext.segment_pool(h, ranges, weights, **meta).backward(grad)

        else:

            def run():
                h.grad = None
                reference.segment_pool(h, ranges, weights).backward(grad)

        return run

    params = {"tokens": tokens, "D": d, "N": n, "dtype": str(dtype).replace("torch.", "")}
    op = "segment_pool fwd+bwd" + (" [raw-op fallback]" if fallback else "")
    return Case(op, params, make, floor_bytes=floor)


def cases(device: str, quick: bool) -> list[Case]:
    """B*T = 4096 tokens, D in {576, 2048, 4096}, fp32 and bf16; then the first case again
    without host metadata (the labelled raw-op fallback row)."""
    tokens = 1024 if quick else 4096
    dims = [576] if quick else [576, 2048, 4096]
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    out = [_case(tokens, d, device, dtype) for d in dims for dtype in dtypes]
    return [*out, _case(tokens, dims[0], device, dtypes[0], fallback=True)]


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Scaling: linear in tokens (and in D) for pooling."""
    return linear_sweeps(lambda t, d: _case(t, d, device), 576, quick)
