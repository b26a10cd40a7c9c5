"""``mta-ext demo``, step by step: ``mta_ext.cli`` parses the flags and calls :func:`run`.

One function per step of the run, in order: :func:`set_threads`, :func:`load_data` (split the
documents, cut passages), :func:`load_pair` (models + layer schedule, the schedule checked
before any weights load), :func:`align_batches` (the aligner, spaCy spans once per passage,
the collated batches, unit coverage), :func:`build_loss` (``MTALoss``), :func:`train_and_evaluate`
(held-out CE before, CE + MTA [+ ULD], held-out CE after, the checkpoint, the optional CE-only
run) and :func:`report` (the table, ``metrics.json``, ``loss_curve.png``).
:func:`run_on_policy` is the ``--on-policy`` variant (the student samples, the teacher scores).
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
from typing import TYPE_CHECKING, Any

import torch

from .cli import ScheduleSpec, _log, _require_packages

if TYPE_CHECKING:
    from .alignment import Aligner
    from .losses import MTALoss
    from .phrases import SpanPool

__all__ = [
    "align_batches",
    "build_loss",
    "load_data",
    "load_pair",
    "report",
    "run",
    "run_on_policy",
    "set_threads",
    "train_and_evaluate",
]


# --------------------------------------------------------------------------------- helpers


def _choose_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)``: ``--threads`` when given, else every CPU this process may run on
    (``os.sched_getaffinity``: respects taskset, cgroups' cpusets and container limits)."""
    if requested:
        return requested, "--threads"
    if hasattr(os, "sched_getaffinity"):
        n, why = len(os.sched_getaffinity(0)), "the CPUs this process may use"
    else:
        n, why = os.cpu_count() or 1, "the machine's CPUs"
    return max(1, n), why


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


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------- steps


def set_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads``: ``--threads``, else every CPU this process may run on; a note
    when the load average says other processes compete for them."""
    threads, why = _choose_threads(args.threads)
    torch.set_num_threads(threads)
    _log(f"torch threads: {threads} ({why}; --threads N to change)")
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if args.threads is None and threads > 1 and load > threads + 0.5:
        _log(
            f"note: load average {load:.1f} on {threads} CPUs: other processes compete for "
            "them; if the steps are slow, compare with --threads 1"
        )


def load_data(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(train_texts, eval_texts)``: split the documents first (10 % held out, ``--seed``),
    then cut each side into passages of ~``--max-length`` tokens; ``--eval-size`` held-out
    passages are kept."""
    from .data import chunk_texts, load_texts, train_eval_split

    docs = load_texts(args.data)
    train_docs, eval_docs = train_eval_split(docs, 0.1, seed=args.seed)
    max_chars = args.max_length * 4  # ~4 characters per token for English BPE
    train_texts = chunk_texts(train_docs, max_chars)
    eval_texts = chunk_texts(eval_docs, max_chars)[: args.eval_size]
    _log(
        f"data: {len(docs)} documents -> {len(train_texts)} training passages, "
        f"{len(eval_texts)} held-out passages (from {len(eval_docs)} held-out documents)"
    )
    return train_texts, eval_texts


def load_pair(
    args: argparse.Namespace, timings: dict[str, float]
) -> tuple[torch.nn.Module, Any, torch.nn.Module, Any, Any]:
    """Resolve both models, build the schedule from their configs (fails before any weights
    load), then load weights. Returns ``(teacher, t_tok, student, s_tok, schedule)``."""
    from transformers import AutoConfig

    from .models import load_model_and_tokenizer, resolve_model_dir

    tc: Any  # a transformers config
    sc: Any
    t0 = time.perf_counter()
    t_dir = resolve_model_dir(args.teacher, log=_log)
    s_dir = resolve_model_dir(args.student, log=_log)
    tc, sc = AutoConfig.from_pretrained(t_dir), AutoConfig.from_pretrained(s_dir)
    sched, note = args.schedule.build(
        tc.num_hidden_layers, sc.num_hidden_layers, word_only=args.phrases == "none"
    )
    if note:
        _log(note)
    teacher, t_tok = load_model_and_tokenizer(t_dir, log=_log)
    student, s_tok = load_model_and_tokenizer(s_dir, log=_log)
    teacher.requires_grad_(False).eval()
    timings["load_models_s"] = time.perf_counter() - t0
    tc, sc = teacher.config, student.config
    _log(
        f"teacher: {args.teacher} ({tc.model_type}, {tc.num_hidden_layers} layers, width "
        f"{tc.hidden_size}, vocab {len(t_tok)}); student: {args.student} ({sc.model_type}, "
        f"{sc.num_hidden_layers} layers, width {sc.hidden_size}, vocab {len(s_tok)}) "
        f"[loaded in {timings['load_models_s']:.1f}s]"
    )
    return teacher, t_tok, student, s_tok, sched


def align_batches(
    args: argparse.Namespace,
    t_tok: Any,
    s_tok: Any,
    train_texts: list[str],
    timings: dict[str, float],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``(batches, coverage)``: ``--steps`` shuffled batches of ``--batch-size`` passages,
    collated with the alignment (spaCy once per passage used, cached as char spans), and the
    share of each side's non-pad tokens covered by shared units over all batches. Prints the
    alignment of the shortest passage of the first batch."""
    import mta_ext

    from .data import shuffled_batches
    from .integrations import MTACollator, unit_coverage

    t0 = time.perf_counter()
    phrases = "spacy" if args.phrases == "spacy" else None
    aligner = mta_ext.Aligner(
        t_tok, s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    collator = MTACollator(aligner, max_length=args.max_length)
    index_batches = shuffled_batches(len(train_texts), args.steps, args.batch_size, args.seed)
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
        "\nalignment of one training example (mta-ext explain shows any text):\n"
        + _trim_explain(first.explain(shortest))
        + "\n"
    )
    cov = [unit_coverage(b["alignment"]) for b in batches]
    coverage = {side: sum(c[side] for c in cov) / len(cov) for side in ("teacher", "student")}
    _log(
        f"tokens covered by shared units: teacher {coverage['teacher']:.1%}, "
        f"student {coverage['student']:.1%} (non-pad tokens, over all training batches)"
    )
    return batches, coverage


def build_loss(args: argparse.Namespace, sched: Any, tc: Any, sc: Any) -> Any:
    """The ``MTALoss`` of the schedule for these configs' widths, initialised from ``--seed``."""
    import mta_ext

    _seed_all(args.seed)
    mta_loss = mta_ext.MTALoss(sched, sc.hidden_size, tc.hidden_size)
    _log(f"MTA schedule (teacher layer, student layer, units): {list(map(tuple, sched))}")
    return mta_loss


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
    """One run of ``len(batches)`` AdamW steps (``distillation_loss`` with ``mta_weight``
    and the optional ``kd`` hook, gradients clipped at 1.0); returns the per-step components
    and seconds, printed as it goes."""
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


def train_and_evaluate(
    args: argparse.Namespace,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    s_tok: Any,
    mta_loss: Any,
    batches: list[dict[str, Any]],
    eval_texts: list[str],
    out: Path,
    timings: dict[str, float],
) -> tuple[dict[str, list[dict[str, float]]], dict[str, dict[str, float]], float]:
    """Held-out CE before, ``--steps`` of CE + MTA (+ ``--kd uld``), held-out CE after, the
    student saved to ``out/student``; with ``--compare`` the same steps CE-only from the same
    start and seed. Returns ``(runs, results, checkpoint_mb)``: the per-step history of each
    run, the held-out results by name and the checkpoint's size."""
    from .integrations import heldout_ce, save_student

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
        from .logit_kd import uld_kd

        kd = uld_kd()
    runs["ce+mta"] = _train(
        "ce+mta", student, teacher, mta_loss, batches, args, args.mta_weight, kd
    )
    timings["train_mta_s"] = time.perf_counter() - t0
    results["after_ce+mta"] = heldout_ce(student, s_tok, eval_texts, max_length=args.max_length)
    save_student(student, out / "student", tokenizer=s_tok, mta_loss=mta_loss)
    checkpoint_mb = _dir_size(out / "student") / 1e6
    if initial is not None:
        student.load_state_dict(initial)
        _seed_all(args.seed)
        t0 = time.perf_counter()
        runs["ce only"] = _train("ce only", student, None, None, batches, args, 0.0)
        timings["train_ce_s"] = time.perf_counter() - t0
        results["after_ce_only"] = heldout_ce(
            student, s_tok, eval_texts, max_length=args.max_length
        )
    return runs, results, checkpoint_mb


def _model_info(config: Any, tokenizer: Any) -> dict[str, Any]:
    return {
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "width": config.hidden_size,
        "vocab": len(tokenizer),
    }


def report(
    args: argparse.Namespace,
    out: Path,
    models: tuple[Any, Any, Any, Any],
    sched: Any,
    coverage: dict[str, float],
    runs: dict[str, list[dict[str, float]]],
    results: dict[str, dict[str, float]],
    n_eval: int,
    checkpoint_mb: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Print the held-out table (and CE+MTA vs CE-only), write ``out/metrics.json`` and
    ``out/loss_curve.png``; returns the metrics. ``models``: ``(teacher config, teacher
    tokenizer, student config, student tokenizer)``; ``n_eval``: held-out passages."""
    from ._plot import plot_runs

    tc, t_tok, sc, s_tok = models
    before = results["before"]
    _log("\nheld-out student cross-entropy (lower is better):")
    for name, r in results.items():
        delta = "" if name == "before" else f"  (change {r['ce'] - before['ce']:+.4f})"
        _log(f"  {name:15s} CE {r['ce']:.4f}  ppl {r['ppl']:8.2f}{delta}")
    if "after_ce_only" in results:
        diff = results["after_ce+mta"]["ce"] - results["after_ce_only"]["ce"]
        verdict = "lower" if diff < 0 else "higher" if diff > 0 else "equal"
        _log(
            f"  CE+MTA vs CE-only after {args.steps} steps: {diff:+.4f} ({verdict}); one seed, "
            f"{n_eval} passages: a smoke test, not a benchmark."
        )
    metrics = {
        "args": _args_record(args),
        "teacher": _model_info(tc, t_tok),
        "student": _model_info(sc, s_tok),
        "schedule": [list(p) for p in sched],
        "coverage": coverage,
        "heldout": results,
        "history": runs,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
        "checkpoint_mb": checkpoint_mb,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    title = (
        f"{args.teacher} -> {args.student}: {args.steps} steps x {args.batch_size} passages, "
        f"seed {args.seed}"
    )
    plot_runs(out / "loss_curve.png", runs, results, title=title)
    _log(
        f"\nwrote {out / 'metrics.json'}, {out / 'loss_curve.png'} and {out / 'student'} "
        f"(the student in fp32 with mta_projectors.safetensors, {checkpoint_mb:.0f} MB); "
        f"total {timings['total_s']:.0f}s"
    )
    return metrics


def _args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as metrics.json records them (a schedule by the text it was given as)."""
    return {
        k: (v.source if isinstance(v, ScheduleSpec) else v)
        for k, v in vars(args).items()
        if k != "func"
    }


# --------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the metrics dict it also writes to ``<out>/metrics.json``.

    The output folder is created only when the first result is written.
    """
    if getattr(args, "on_policy", False):
        _require_packages("demo", args, ("tqdm",))
    else:
        _require_packages("demo", args, ("tqdm", "matplotlib"))
    set_threads(args)
    out = Path(args.out)
    t_start = time.perf_counter()
    if getattr(args, "on_policy", False):
        return run_on_policy(args, out, t_start)
    timings: dict[str, float] = {}
    train_texts, eval_texts = load_data(args)
    teacher, t_tok, student, s_tok, sched = load_pair(args, timings)
    batches, coverage = align_batches(args, t_tok, s_tok, train_texts, timings)
    mta_loss = build_loss(args, sched, teacher.config, student.config)
    runs, results, checkpoint_mb = train_and_evaluate(
        args, teacher, student, s_tok, mta_loss, batches, eval_texts, out, timings
    )
    timings["total_s"] = time.perf_counter() - t_start
    models = (teacher.config, t_tok, student.config, s_tok)
    return report(
        args,
        out,
        models,
        sched,
        coverage,
        runs,
        results,
        len(eval_texts),
        checkpoint_mb,
        timings,
    )


# --------------------------------------------------------------------------------- on-policy


def run_on_policy(args: argparse.Namespace, out: Path, t_start: float) -> dict[str, Any]:
    """``mta-ext demo --on-policy``: sample, align on the sampled ids, KD + L_MTA."""
    import mta_ext

    from .integrations import heldout_ce, save_student
    from .phrases import SpanPool

    timings: dict[str, float] = {}
    prompts, eval_texts = _on_policy_prompts(args)
    teacher, t_tok, student, s_tok, sched = load_pair(args, timings)
    phrases = "spacy" if args.phrases == "spacy" else None
    aligner = mta_ext.Aligner(
        t_tok, s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    mta_loss = build_loss(args, sched, teacher.config, student.config)
    pool = SpanPool(args.span_workers, phrases=phrases) if args.span_workers and phrases else None
    if pool is not None:
        pool.warm_up()
    before = heldout_ce(student, s_tok, eval_texts, max_length=args.max_length)
    _log(f"held-out before: CE {before['ce']:.4f}  ppl {before['ppl']:.2f}")
    t0 = time.perf_counter()
    try:
        history, last = _train_on_policy(
            args, teacher, t_tok, student, s_tok, aligner, mta_loss, prompts, pool
        )
    finally:
        if pool is not None:
            pool.close()
    timings["train_on_policy_s"] = time.perf_counter() - t0
    after = heldout_ce(student, s_tok, eval_texts, max_length=args.max_length)
    _log(
        f"held-out student CE: before {before['ce']:.4f} -> after {after['ce']:.4f} "
        f"({after['ce'] - before['ce']:+.4f}; {args.steps} steps, one seed: a smoke test)"
    )
    phase = {
        k: sum(h[k] for h in history) / len(history)
        for k in ("generate_s", "align_spans_s", "teacher_s", "student_s", "losses_s")
    }
    phase["backward_step_s"] = sum(h["backward_step_s"] for h in history) / len(history)
    _log(
        "mean seconds per step: "
        + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in phase.items())
        + f"; a sampled completion: {last.texts[0][:120]!r}"
    )
    save_student(student, out / "student", tokenizer=s_tok, mta_loss=mta_loss)
    timings["total_s"] = time.perf_counter() - t_start
    metrics = {
        "args": _args_record(args),
        "mode": "on-policy",
        "schedule": [list(p) for p in sched],
        "heldout": {"before": before, "after": after},
        "history": history,
        "mean_phase_s": phase,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _log(f"wrote {out / 'metrics.json'} and {out / 'student'}; total {timings['total_s']:.0f}s")
    return metrics


def _on_policy_prompts(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(prompts, eval_texts)``: ``--steps × --batch-size`` prompts "Continue this text: "
    + the first 12 words of a shuffled training passage (repeated when too few), and the
    held-out passages as :func:`load_data` cuts them."""
    from .data import chunk_texts, load_texts, train_eval_split

    docs = load_texts(args.data)
    train_docs, eval_docs = train_eval_split(docs, 0.1, seed=args.seed)
    eval_texts = chunk_texts(eval_docs, args.max_length * 4)[: args.eval_size]
    rng = random.Random(args.seed)
    words = [w for w in (t.split() for t in chunk_texts(train_docs, 400)) if len(w) > 12]
    rng.shuffle(words)
    prompts = ["Continue this text: " + " ".join(w[:12]) for w in words]
    need = args.steps * args.batch_size
    prompts = (prompts * (need // max(len(prompts), 1) + 1))[:need]
    return prompts, eval_texts


def _train_on_policy(
    args: argparse.Namespace,
    teacher: torch.nn.Module,
    t_tok: Any,
    student: torch.nn.Module,
    s_tok: Any,
    aligner: Aligner,
    mta_loss: MTALoss,
    prompts: list[str],
    pool: SpanPool | None,
) -> tuple[list[dict[str, float]], Any]:
    """``--steps`` on-policy steps of ``--batch-size`` prompts; returns the per-step parts
    (losses, phase seconds) and the last sampled batch."""
    from .onpolicy import on_policy_step, prompt_ids

    opt = torch.optim.AdamW(
        [
            {"params": list(student.parameters()), "lr": args.lr},
            {"params": list(mta_loss.parameters()), "lr": args.proj_lr},
        ],
        weight_decay=0.0,
    )
    student.train()
    eos = [t_tok.eos_token_id] if t_tok.eos_token_id is not None else []
    history: list[dict[str, float]] = []
    _seed_all(args.seed)
    batch = None
    for step in range(1, args.steps + 1):
        chunk = prompts[(step - 1) * args.batch_size : step * args.batch_size]
        ts = time.perf_counter()
        loss, parts, batch = on_policy_step(
            student,
            teacher,
            aligner,
            mta_loss,
            prompt_ids(s_tok, chunk),
            prompt_ids(t_tok, chunk),
            max_new_tokens=args.max_new_tokens,
            mta_share=args.mta_share,
            span_pool=pool,
            teacher_suffix_ids=eos,
        )
        tb = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        parts["backward_step_s"] = time.perf_counter() - tb
        parts["seconds"] = time.perf_counter() - ts
        parts["step"] = step
        history.append(parts)
        if step == 1:
            _log(
                "\nalignment of one sampled completion:\n"
                + _trim_explain(batch.alignment.explain(0))
                + "\n"
            )
        _log(
            f"  [on-policy] step {step:3d}  kd {parts.get('kd', 0):.4f}  "
            f"mta {parts.get('mta', 0):.4f}  units {parts['units']:.0f}  "
            f"(generate {parts['generate_s']:.1f}s, align+spans "
            f"{parts['align_spans_s']:.2f}s, teacher {parts['teacher_s']:.1f}s, step "
            f"{parts['seconds']:.1f}s)"
        )
    return history, batch
