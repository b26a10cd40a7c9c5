"""Training-step overhead of MTA: the headline number.

    python -m benchmarks.training.bench_step [--quick] [--teacher demo-teacher]
                                             [--student demo-student] [--batch-size 8]
                                             [--max-length 128] [--repeats 5]

One distillation step = teacher forward (no grad) + student forward/backward + AdamW step. Modes:

* ``none``       CE only (the teacher still runs: it is needed for any KD recipe);
* ``mta_ext``    CE + ``MTALoss`` (3 pairs, salience weighting, Hid on) through the extension;
* ``reference``  CE + ``mta_ext.reference.structural_loss`` (the pure-PyTorch twin);
* ``original``   CE + ``mta_ext.reference.structural_loss_original`` (the authors' loss). Not
  run by default: it needs one shared tokenizer, and the demo pair (like ``--quick``) has two;
  ``benchmarks/training/bench_loss.py`` compares it at the paper's shape.

Hidden states are requested only in the MTA modes. The alignment is built once by the
collator (data-pipeline work, reported separately). ``--quick`` uses tiny random models with two
different tokenizers (CI-sized). Writes ``benchmarks/results/step_<device>[_quick].json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import markdown_table
from benchmarks.training.pair import Pair, add_pair_args, setup_pair, write_run


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_pair_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", nargs="*", default=["none", "mta_ext", "reference"])
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_length = 3, 64
    return args


def _collate(args: argparse.Namespace, pair: Pair) -> dict[str, Any]:
    """One batch of the longer bundled passages through ``MTACollator``, timed with spaCy spans
    parsed inline and with spans given (the data-pipeline cost, reported beside the step)."""
    import mta_ext
    from mta_ext.data import load_texts
    from mta_ext.integrations import MTACollator

    texts = [t for t in load_texts() if len(t) > 200][: args.batch_size]
    collator = MTACollator(mta_ext.Aligner(pair.t_tok, pair.s_tok), max_length=args.max_length)
    t0 = time.perf_counter()
    batch = collator([{"text": t} for t in texts])
    align_s = time.perf_counter() - t0
    spans = mta_ext.annotate_spans(texts)
    t0 = time.perf_counter()
    collator([{"text": t, "spans": s} for t, s in zip(texts, spans, strict=True)])
    align_cached_s = time.perf_counter() - t0
    return {"texts": texts, "batch": batch, "align_s": align_s, "align_cached_s": align_cached_s}


def _make_steps(pair: Pair, batch: dict[str, Any], modes: list[str]) -> dict[str, Callable]:
    """One closure per mode: teacher forward (no grad), student forward/backward with the
    mode's extra loss, AdamW step."""
    from mta_ext import reference

    dev, mta, schedule = pair.device, pair.mta, pair.mta.schedule
    al = batch["alignment"].to(dev)
    s_in = {k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels")}
    t_in = {
        "input_ids": batch["teacher_input_ids"].to(dev),
        "attention_mask": batch["teacher_attention_mask"].to(dev),
    }

    def extra_loss(mode, s_out, t_out):
        if mode == "mta_ext":
            return mta(s_out, t_out, al)
        fn = (
            reference.structural_loss if mode == "reference" else reference.structural_loss_original
        )
        return fn(s_out.hidden_states, t_out.hidden_states, al, schedule, projectors=mta.projectors)

    def make_step(mode):
        hs = mode != "none"

        def step():
            with torch.no_grad():
                t_out = pair.teacher(**t_in, output_hidden_states=hs)
            s_out = pair.student(**s_in, output_hidden_states=hs)
            loss = s_out.loss
            if hs:
                loss = loss + extra_loss(mode, s_out, t_out)
            loss.backward()
            pair.opt.step()
            pair.opt.zero_grad(set_to_none=True)

        return step

    return {mode: make_step(mode) for mode in modes}


def _time_interleaved(steps: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Warm every mode up once, then time them round by round (interleaved, so that
    machine-load drift hits all of them alike)."""
    for step in steps.values():  # warm-up (allocates optimizer state, autograd caches)
        step()
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for _ in range(repeats):
        for mode, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - t0)
    return times


def _rows(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Median / min / max per mode, and the overhead over ``none`` when it ran first."""
    rows = []
    for mode, ts in times.items():
        rows.append(
            {
                "mode": mode,
                "step_median_s": statistics.median(ts),
                "step_min_s": min(ts),
                "step_max_s": max(ts),
                "runs": len(ts),
            }
        )
        print(rows[-1], flush=True)
    base = rows[0]["step_median_s"] if rows and rows[0]["mode"] == "none" else None
    for r in rows:
        if base:
            r["overhead_pct"] = 100 * (r["step_median_s"] - base) / base
    return rows


def _report(
    args: argparse.Namespace, pair: Pair, data: dict[str, Any], rows: list[dict[str, Any]]
) -> dict:
    """Print the table and the setup, write ``step_<device>[_quick].json``."""
    table = markdown_table(
        rows, ["mode", "step_median_s", "step_min_s", "step_max_s", "overhead_pct"]
    )
    batch = data["batch"]
    cov = batch["alignment"].units
    info = {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": len(data["texts"]),
        "max_length": args.max_length,
        "schedule": str(pair.mta.schedule),
        "teacher_tokens": int(batch["teacher_attention_mask"].sum()),
        "student_tokens": int(batch["attention_mask"].sum()),
        "units": {g: int(u.num_units) for g, u in cov.items()},
        "collate_with_spacy_s": data["align_s"],
        "collate_with_cached_spans_s": data["align_cached_s"],
    }
    return write_run("step", args, info, rows, table)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    pair = setup_pair(args, lr=1e-5)
    data = _collate(args, pair)
    steps = _make_steps(pair, data["batch"], args.modes)
    rows = _rows(_time_interleaved(steps, args.repeats))
    return _report(args, pair, data, rows)


if __name__ == "__main__":
    main()
