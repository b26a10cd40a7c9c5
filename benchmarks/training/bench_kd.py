"""Cross-tokenizer logit KD (ULD at shared token boundaries), forward + backward.

    python -m benchmarks.training.bench_kd [--quick] [--device cpu|cuda] [--repeats 5]

Impls:
* ``mta_ext``: ``mta_ext.logit_kd.uld_distance`` (chunked, top-k, custom backward).
* ``naive``: what one writes first (and what TRL's GOLD does per example): fp32 softmax of all
  matched rows at once, full-vocabulary sort, top-k slice, autograd; memory ``O(N · V)`` fp32.
* ``reference`` (quick mode only): ``mta_ext.reference.uld_reference``, Python loops.

Shapes: teacher vocabulary 262,144 (Gemma-3) and student 49,152 (SmolLM2) in the full run;
offsets from random tokenizations of one text per example (words of 2-8 chars, each cut into
1-2 teacher / 1-3 student tokens), so every word end is a shared boundary (~40-60% of tokens).
Logits are fp32 ``[B, T, V]``; their own memory is not counted (it exists in any training
step). Peak memory: the extra peak RSS of one fwd+bwd (benchmarks/common.py).
Writes ``benchmarks/results/kd_<device>[_quick].json``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random

import torch

from benchmarks.common import Case, machine_info, markdown_table, run_cases, write_results
from mta_ext.logit_kd import boundary_pairs, uld_distance
from mta_ext.reference.logit_kd import uld_reference

COLUMNS = [
    "B",
    "T",
    "V_t",
    "V_s",
    "N",
    "top_k",
    "mta_ext_median_ms",
    "naive_median_ms",
    "speedup_vs_naive",
    "mta_ext_peak_extra_mib",
    "naive_peak_extra_mib",
]


def _words(rng: random.Random, n_chars: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < n_chars:
        n = rng.randint(2, 8)
        out.append((pos, pos + n))
        pos += n
    return out


def _offsets(rng: random.Random, words, T: int, max_pieces: int) -> torch.Tensor:
    """[B, T, 2]: each word cut into 1..max_pieces tokens (word ends are shared boundaries)."""
    offs = torch.zeros(len(words), T, 2, dtype=torch.int64)
    for b, ws in enumerate(words):
        toks = []
        for a, e in ws:
            k = min(rng.randint(1, max_pieces), e - a)
            cuts = sorted(rng.sample(range(a + 1, e), k - 1)) if k > 1 else []
            bounds = [a, *cuts, e]
            toks += list(itertools.pairwise(bounds))
        offs[b] = torch.tensor(toks[:T])
    return offs


def _naive(zs, zt, s_rows, t_rows, top_k):
    ps = torch.softmax(zs.reshape(-1, zs.shape[-1])[s_rows].float(), -1)
    pt = torch.softmax(zt.reshape(-1, zt.shape[-1])[t_rows].float(), -1)
    ps = ps.sort(-1, descending=True).values[:, :top_k]
    pt = pt.sort(-1, descending=True).values[:, :top_k]
    return (ps - pt).abs().sum(-1).mean()


def make_case(B: int, T: int, V_t: int, V_s: int, top_k: int, device: str, impls) -> Case:
    rng = random.Random(0)
    words = [_words(rng, 5 * T) for _ in range(B)]  # >= T tokens per side
    to, so = _offsets(rng, words, T, 2), _offsets(rng, words, T, 3)
    T_t = T_s = T
    tm = torch.ones(B, T_t, dtype=torch.int64)
    sm = torch.ones(B, T_s, dtype=torch.int64)
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    g = torch.Generator().manual_seed(0)
    zt = (torch.randn(B, T_t, V_t, generator=g) * 3).to(device)
    zs0 = torch.randn(B, T_s, V_s, generator=g).to(device)

    def make(impl: str):
        zs = zs0.clone().requires_grad_()

        def run():
            zs.grad = None
            if impl == "mta_ext":
                loss = uld_distance(zs, zt, s_rows, t_rows, top_k=top_k)
            elif impl == "naive":
                loss = _naive(zs, zt, s_rows.to(device), t_rows.to(device), top_k)
            else:
                loss = uld_reference(zs, zt, to, tm, so, sm, top_k=top_k)
            loss.backward()
            return loss

        return run

    params = dict(B=B, T=T, V_t=V_t, V_s=V_s, N=int(t_rows.numel()), top_k=top_k)
    return Case("uld", params, make, impls=impls)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.quick:
        shapes = [(2, 32, 32768, 8192, 64)]
        impls, repeats, warmup = ("mta_ext", "naive", "reference"), 2, 1
    else:
        shapes = [(2, 128, 262144, 49152, 64), (4, 128, 262144, 49152, 128)]
        impls, repeats, warmup = ("mta_ext", "naive"), args.repeats, 1
    cases = [make_case(*s, device=args.device, impls=impls) for s in shapes]
    rows = run_cases(cases, device=args.device, repeats=repeats, warmup=warmup)
    for r in rows:
        if "naive_median_ms" in r:
            r["speedup_vs_naive"] = r["naive_median_ms"] / r["mta_ext_median_ms"]
    print(markdown_table(rows, COLUMNS))
    info = machine_info(args.device)
    info["loadavg"] = os.getloadavg()
    name = f"kd_{args.device}" + ("_quick" if args.quick else "")
    path = write_results(name, {"machine": info, "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
