"""token_salience: mta_ext (streamed, no T x T matrix) vs the reference (full T x T per example)."""

from __future__ import annotations

import torch

import mta_ext
from benchmarks.common import Case
from mta_ext import reference


def _case(B: int, T: int, D: int, device: str, dtype=torch.float32) -> Case:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=gen).to(dtype).to(device)
    lengths = torch.randint(int(0.75 * T), T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)  # right padding, ragged

    def make(impl):
        fn = mta_ext.token_salience if impl == "mta_ext" else reference.token_salience
        return lambda: fn(hidden, mask)

    params = {"B": B, "T": T, "D": D, "dtype": str(dtype).replace("torch.", "")}
    return Case("token_salience", params, make)


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        return [_case(2, 128, 576, device)]
    out = [_case(8, t, 576, device) for t in (256, 1024)]
    out.append(_case(8, 1024, 576, device, torch.bfloat16))
    out.append(_case(8, 512, 2048, device))
    return out


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Quadratic in T (the attention), linear in D."""
    ts = [128, 256] if quick else [128, 256, 512, 1024, 2048]
    return {"T": [_case(2 if quick else 8, t, 576, device) for t in ts]}
