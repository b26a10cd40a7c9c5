"""Training-step overhead of MTA: the headline number.

    python -m benchmarks.bench_step [--quick] [--teacher demo-teacher] [--student demo-student]
                                    [--batch-size 8] [--max-length 128] [--repeats 5]

One distillation step = teacher forward (no grad) + student forward/backward + AdamW step. Modes:

* ``none``       CE only (the teacher still runs: it is needed for any KD recipe);
* ``mta_ext``    CE + ``MTALoss`` (3 pairs, salience weighting, Hid on) through the extension;
* ``reference``  CE + ``mta_ext.reference.structural_loss`` (the pure-PyTorch twin);
* ``original``   CE + ``mta_ext.reference.structural_loss_original`` (the authors' loss). Not
  run by default: it needs one shared tokenizer, and the demo pair (like ``--quick``) has two;
  ``benchmarks/bench_loss.py`` compares it at the paper's shape.

Hidden states are requested only in the MTA modes. The alignment is built once by the
collator (data-pipeline work, reported separately). ``--quick`` uses tiny random models with two
different tokenizers (CI-sized). Writes ``benchmarks/results/step_<device>[_quick].json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.common import machine_info, markdown_table, write_results


def _models(args, tmp: str):
    from tiny_fixtures import build_tiny_model, tiny_tokenizer

    from mta_ext.models import load_model_and_tokenizer

    if args.quick:
        from mta_ext.data import load_texts

        texts = load_texts()[:200]
        t_dir = build_tiny_model(
            f"{tmp}/t",
            tiny_tokenizer("bpe", texts=texts, vocab_size=500),
            num_layers=4,
            hidden_size=64,
            seed=1,
        )
        s_dir = build_tiny_model(
            f"{tmp}/s",
            tiny_tokenizer("bpe", texts=texts, vocab_size=300),
            num_layers=3,
            hidden_size=32,
            seed=2,
        )
        args.teacher, args.student = str(t_dir), str(s_dir)
    teacher, t_tok = load_model_and_tokenizer(args.teacher, log=lambda m: print(m, flush=True))
    student, s_tok = load_model_and_tokenizer(args.student, log=lambda m: print(m, flush=True))
    return teacher, t_tok, student, s_tok


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", default="demo-student")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", nargs="*", default=["none", "mta_ext", "reference"])
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_length = 3, 64

    import mta_ext
    from mta_ext import reference
    from mta_ext.data import load_texts
    from mta_ext.integrations import MTACollator

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        teacher, t_tok, student, s_tok = _models(args, tmp)
    dev = torch.device(args.device)
    teacher.to(dev).eval().requires_grad_(False)
    student.to(dev).train()
    tcfg, scfg = teacher.config, student.config
    schedule = mta_ext.LayerSchedule.uniform(tcfg.num_hidden_layers, scfg.num_hidden_layers)
    mta = mta_ext.MTALoss(schedule, scfg.hidden_size, tcfg.hidden_size).to(dev)
    opt = torch.optim.AdamW(list(student.parameters()) + list(mta.parameters()), lr=1e-5)

    texts = [t for t in load_texts() if len(t) > 200][: args.batch_size]
    collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=args.max_length)
    t0 = time.perf_counter()
    batch = collator([{"text": t} for t in texts])
    align_s = time.perf_counter() - t0
    spans = mta_ext.annotate_spans(texts)
    t0 = time.perf_counter()
    collator([{"text": t, "spans": s} for t, s in zip(texts, spans, strict=True)])
    align_cached_s = time.perf_counter() - t0
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
                t_out = teacher(**t_in, output_hidden_states=hs)
            s_out = student(**s_in, output_hidden_states=hs)
            loss = s_out.loss
            if hs:
                loss = loss + extra_loss(mode, s_out, t_out)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    # Interleave the modes round by round so that machine-load drift hits all of them alike.
    steps = {mode: make_step(mode) for mode in args.modes}
    for step in steps.values():  # warm-up (allocates optimizer state, autograd caches)
        step()
    times: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for _ in range(args.repeats):
        for mode, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - t0)
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
    table = markdown_table(
        rows, ["mode", "step_median_s", "step_min_s", "step_max_s", "overhead_pct"]
    )
    cov = batch["alignment"].units
    info = {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": len(texts),
        "max_length": args.max_length,
        "schedule": str(schedule),
        "teacher_tokens": int(t_in["attention_mask"].sum()),
        "student_tokens": int(s_in["attention_mask"].sum()),
        "units": {g: int(u.num_units) for g, u in cov.items()},
        "collate_with_spacy_s": align_s,
        "collate_with_cached_spans_s": align_cached_s,
    }
    print(table)
    print(info)
    payload = {
        "machine": machine_info(args.device),
        "setup": info,
        "rows": rows,
        "table": table + f"\n{info}\n",
    }
    name = f"step_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload


if __name__ == "__main__":
    main()
