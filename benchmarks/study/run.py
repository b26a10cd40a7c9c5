"""One (arm, seed) of the study: train the student from its pristine copy on the cached
teacher, then evaluate it (held-out CE, held-out DSA / Hid, ROUGE-L of greedy continuations)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import random
import statistics
import time
from typing import Any

import torch

from benchmarks.study.arms import Arm, hid_only, kd_uld, mean_of
from benchmarks.study.prepare import Context, load_avg, log
from benchmarks.study.rouge import rouge_l


def autocast(args: argparse.Namespace):
    if args.autocast == "bf16":
        return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_loss(
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
    with autocast(args):
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
        mta, comps = hid_only(
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
        v = mean_of(comps, kind)
        if v is not None:
            row[kind] = v
    if arm.kd:
        assert t_topk is not None
        kd = kd_uld(out.logits, t_topk, alignment)
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
        with autocast(args):
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
            v = mean_of(comps, kind)
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
            with autocast(args):
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
        loss, row = step_loss(ctx, arm, student, projectors, batch, t_hs, t_topk, step == 0)
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
            log(
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
    rec["load_avg_end"] = load_avg()
    log(
        f"  [{arm.name} s{seed}] held-out CE {rec['heldout']['ce']:.4f}"
        + (f"  ROUGE-L {rec['rouge_l']:.4f}" if "rouge_l" in rec else "")
        + f"  held-out DSA {rec.get('heldout_dsa', float('nan')):.4f}"
        + f"  (train {train_s:.0f}s, eval {rec['eval_s']:.0f}s)"
    )
    del student, opt
    gc.collect()
    return rec
