"""What on-policy MTA costs per step, and where.

    python -m benchmarks.training.bench_onpolicy [--quick] [--teacher demo-teacher]
                                                 [--student demo-student] [--batch-size 4]
                                                 [--max-new-tokens 32] [--repeats 3]

One on-policy step (``mta_ext.onpolicy.on_policy_step`` + backward + AdamW): the student samples
``max_new_tokens`` tokens per prompt (HF ``generate``, fixed length: ``min_new_tokens`` = max, so
every mode samples the same amount), the sampled ids get their offsets (C++, no re-encoding), the
teacher re-encodes the completion text and scores it, then the losses. Modes, interleaved round
by round so that load drift hits all alike:

* ``kd``                ULD at shared token boundaries only (needs the offsets, not the spans);
* ``kd+mta``            ``0.5·ULD + 0.5·L_MTA``, spaCy spans parsed inline (critical path);
* ``kd+mta (worker)``   the same, spaCy in a ``SpanPool`` worker, overlapped with the forwards;
* ``kd+mta (words)``    the same, regex words only (``phrases=None``: no spaCy at all).

Per mode: the step's median and the medians of its phases (generate, align+spans, teacher
forward, student forward, losses forward, backward + optimizer step), in wall seconds and in
process CPU seconds (a span worker's CPU is not counted: it is off the critical path); the MTA
share is ``(step(mode) - step(kd)) / step(mode)`` in CPU time, which a busy machine disturbs far
less than wall time (run with ``--threads 1`` there: no thread waits for another). Separately,
on the sampled completions of one batch: spaCy's parse time and the offsets of the sampled ids
(C++) against re-encoding the text with offsets (tokenizers). ``--quick``: tiny random models
with two different tokenizers (CI-sized).
Writes ``benchmarks/results/onpolicy_<device>[_quick].json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import markdown_table
from benchmarks.training.pair import add_pair_args, setup_pair, write_run

PHASES = ("generate_s", "align_spans_s", "teacher_s", "student_s", "losses_s", "backward_s")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_pair_args(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.max_new_tokens, args.batch_size = 2, 8, 2

    import mta_ext
    from mta_ext.data import chunk_texts, load_texts
    from mta_ext.offsets import offsets_for_ids
    from mta_ext.onpolicy import on_policy_step, prompt_ids
    from mta_ext.phrases import SpanPool

    pair = setup_pair(args, lr=1e-6)
    teacher, t_tok, student, s_tok = pair.teacher, pair.t_tok, pair.student, pair.s_tok
    mta, opt = pair.mta, pair.opt
    words = [t.split() for t in chunk_texts(load_texts(), 400) if len(t.split()) > 12]
    prompts = ["Continue this text: " + " ".join(w[:12]) for w in words]
    eos = [t_tok.eos_token_id] if t_tok.eos_token_id is not None else []
    aligners = {
        "spacy": mta_ext.Aligner(t_tok, s_tok),
        "words": mta_ext.Aligner(t_tok, s_tok, phrases=None, words="all"),
    }
    pool = SpanPool(1)
    pool.warm_up()
    modes = {
        "kd": ("spacy", 0.0, None),
        "kd+mta": ("spacy", 0.5, None),
        "kd+mta (worker)": ("spacy", 0.5, pool),
        "kd+mta (words)": ("words", 0.5, None),
    }
    state = {"i": 0, "last": None}

    def step(mode: str) -> dict[str, float]:
        kind, share, span_pool = modes[mode]
        b = args.batch_size
        chunk = prompts[state["i"] * b : (state["i"] + 1) * b]
        state["i"] = (state["i"] + 1) % max(1, len(prompts) // b)
        t0, c0 = time.perf_counter(), time.process_time()
        loss, parts, batch = on_policy_step(
            student,
            teacher,
            aligners[kind],
            mta,
            prompt_ids(s_tok, chunk),
            prompt_ids(t_tok, chunk),
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens,
            mta_share=share,
            span_pool=span_pool,
            teacher_suffix_ids=eos,
        )
        t1, c1 = time.perf_counter(), time.process_time()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        parts["backward_s"] = time.perf_counter() - t1
        parts["backward_cpu_s"] = time.process_time() - c1
        parts["step_s"] = time.perf_counter() - t0
        parts["step_cpu_s"] = time.process_time() - c0
        state["last"] = batch
        return parts

    try:
        for mode in modes:  # warm-up: tables, optimizer state, the worker's first parse
            step(mode)
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode in modes:
                runs[mode].append(step(mode))
                print(mode, f"round {r + 1}:", f"{runs[mode][-1]['step_s']:.2f}s", flush=True)
    finally:
        pool.close()

    rows = []
    for mode, rs in runs.items():
        row: dict = {"mode": mode}
        for ph in ("step_s", *PHASES):
            row[ph[:-2] + "_median_s"] = statistics.median(r[ph] for r in rs)
            row[ph[:-2] + "_cpu_median_s"] = statistics.median(r[ph[:-2] + "_cpu_s"] for r in rs)
        row["units"] = statistics.median(r["units"] for r in rs)
        row["completion_tokens"] = statistics.median(r["completion_tokens"] for r in rs)
        rows.append(row)
    base, base_cpu = rows[0]["step_median_s"], rows[0]["step_cpu_median_s"]
    for row in rows:
        row["mta_share_pct"] = 100 * (row["step_median_s"] - base) / row["step_median_s"]
        row["mta_share_cpu_pct"] = (
            100 * (row["step_cpu_median_s"] - base_cpu) / row["step_cpu_median_s"]
        )
        row["align_spans_pct_of_generate"] = (
            100 * row["align_spans_median_s"] / row["generate_median_s"]
        )
        print(row, flush=True)
    cols = [
        "mode",
        "step_median_s",
        "step_cpu_median_s",
        "generate_cpu_median_s",
        "align_spans_median_s",
        "align_spans_cpu_median_s",
        "teacher_cpu_median_s",
        "student_cpu_median_s",
        "losses_cpu_median_s",
        "backward_cpu_median_s",
        "mta_share_cpu_pct",
        "align_spans_pct_of_generate",
        "units",
    ]
    table = markdown_table(rows, cols)

    # spaCy and the offsets of the sampled ids, on the last batch's completions
    batch = state["last"]
    texts = batch.texts
    comp = [
        row[m].tolist()
        for row, m in zip(batch.student["input_ids"], batch.student["completion_mask"], strict=True)
    ]
    reps = 20

    def timed(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    spacy_s = timed(lambda: mta_ext.annotate_spans(texts))
    ids_s = timed(lambda: offsets_for_ids(s_tok, comp))
    reenc_s = timed(lambda: s_tok(texts, add_special_tokens=False, return_offsets_mapping=True))
    n_tok = sum(len(c) for c in comp)
    info = {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "schedule": str(mta.schedule),
        "spacy_parse_batch_s": spacy_s,
        "offsets_for_ids_batch_s": ids_s,
        "offsets_for_ids_tokens_per_s": n_tok / ids_s if ids_s else None,
        "reencode_with_offsets_batch_s": reenc_s,
        "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
    }
    return write_run("onpolicy", args, info, rows, table)


if __name__ == "__main__":
    main()
