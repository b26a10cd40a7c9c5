"""row_cosine forward+backward: mta_ext vs the reference.

The timed path is the token-level Hid's: ``p`` holds the student's projected rows at the
covered tokens (``n`` of the ``M = B*T`` teacher rows) and requires grad, ``h`` is the frozen
teacher's hidden state read in place at ``rows``; the reference gathers ``h[rows]`` and computes
the clamped cosine with plain torch ops, as ``F.cosine_similarity`` would. No host metadata: the
op never waits for the host.
"""

from __future__ import annotations

import torch

import mta_ext
from benchmarks.common import Case, linear_sweeps
from mta_ext import reference

# Share of the teacher's rows that a student row is compared with (the demo's word-level
# batches cover ~80 % of the tokens).
COVERED = 0.8


def row_cosine_case(
    tokens: int, d: int, device: str, dtype=torch.float32, *, grad_h: bool = False
) -> Case:
    """fwd+bwd of ``n = COVERED * tokens`` rows of width ``d`` against ``tokens`` teacher rows.

    ``grad_h``: ``h`` requires grad too (a trained teacher side; the row's op name says so).
    """
    gen = torch.Generator().manual_seed(0)
    n = int(COVERED * tokens)
    rows = torch.randperm(tokens, generator=gen)[:n].sort().values.to(device)
    p0 = torch.randn(n, d, generator=gen).to(dtype).to(device)
    h0 = torch.randn(tokens, d, generator=gen).to(dtype).to(device)
    grad = torch.randn(n, generator=gen).to(device)
    esize = p0.element_size()
    # The memory floor: the forward reads p and the h rows once, the backward reads them again
    # and writes grad_p (and, with grad_h, all of grad_h: its untouched rows are zeros).
    floor = 5 * n * d * esize + (tokens * d * esize if grad_h else 0)

    def make(impl):
        p = p0.clone().requires_grad_()
        h = h0.clone().requires_grad_(grad_h)
        fn = mta_ext.row_cosine if impl == "mta_ext" else reference.row_cosine

        def run():
            p.grad = None
            h.grad = None
            fn(p, h, rows).float().backward(grad)

        return run

    # tokens: the teacher's rows (M); n = COVERED * tokens of them are compared (in the label,
    # as the ops table has no column of its own for it)
    params = {"tokens": tokens, "n": n, "D": d, "dtype": str(dtype).replace("torch.", "")}
    op = "row_cosine fwd+bwd (n = 0.8 tokens)" + (" [grad p, h]" if grad_h else "")
    return Case(op, params, make, floor_bytes=floor)


def cases(device: str, quick: bool) -> list[Case]:
    """M = B*T = 4096 teacher rows (the paper's 8 x 512), D in {1600, 4096} (the study's and a
    7B teacher's width), fp32 and bf16; then the first case with grad for h as well."""
    tokens = 1024 if quick else 4096
    dims = [576] if quick else [1600, 4096]
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    out = [row_cosine_case(tokens, d, device, dtype) for d in dims for dtype in dtypes]
    return [*out, row_cosine_case(tokens, dims[0], device, dtypes[0], grad_h=True)]


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Scaling: linear in the rows and in D."""
    return linear_sweeps(lambda t, d: row_cosine_case(t, d, device), 576 if quick else 1600, quick)
