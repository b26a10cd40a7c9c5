"""MTA on text that did not exist a moment ago: the student's own samples (on-policy).

The student samples a completion after its prompt; the teacher scores the same completion
text. Each model sees its own prompt (its own chat template) and the units live in the shared
**completion text**:

* **Student side**: the ids it sampled, not a re-encoding (the loss is on those ids). Their
  char offsets come from :func:`mta_ext.offsets.offsets_for_ids` (C++, linear in tokens); the
  completion text is their decode (specials dropped by :func:`on_policy_batch`, kept by the TRL
  path, as TRL decodes). Pieces that are not valid UTF-8 get no offsets.
* **Teacher side**: the completion text re-encoded with the teacher's tokenizer
  (``add_special_tokens=False``) after the teacher's own prompt ids; its offsets are that
  encoding's ``offset_mapping``. With one tokenizer on both sides the teacher scores the
  sampled ids themselves (no re-encoding) and the two rows' completions coincide.
* **The seam**: both sides tokenize the completion on its own, so no token of either side
  crosses the prompt/completion border; prompt tokens get no offsets and belong to no unit. A
  tokenizer whose decoder strips the first space (Llama/Mistral SentencePiece) decodes a
  completion starting with ``▁word`` to ``word``: the units are the same, only the offsets shift.
* **Cut completions**: a completion that stopped on the length limit (its last token is not a
  special token such as EOS) may end inside a word; every unit reaching past the last
  whitespace of its text is dropped as ``truncated`` on both sides (the engine's windows).

    batch = on_policy_batch(aligner, student_prompt_ids, completion_ids, teacher_prompt_ids)
    s_out = student(**batch.student_inputs(), output_hidden_states=True)
    t_out = teacher_forward(teacher, batch.teacher["input_ids"], batch.teacher["attention_mask"])
    loss = kd + mta_loss(s_out, t_out, batch.alignment)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .alignment import Aligner, Alignment, Spans, _merge, _pad, _pad_id
from .offsets import PieceDecoder

__all__ = ["OnPolicyBatch", "completion_offsets", "cut_windows", "on_policy_batch"]


def cut_windows(texts: Sequence[str], truncated: Sequence[bool]) -> np.ndarray:
    """int64 ``[B, 2]``: per text the chars ``[0, hi)`` a unit must lie in. For a truncated
    completion ``hi`` is the end of its last whitespace (the partial last word is outside),
    else ``len(text)``."""
    out = np.zeros((len(texts), 2), dtype=np.int64)
    for b, (text, cut) in enumerate(zip(texts, truncated, strict=True)):
        hi = len(text)
        if cut and text and not text[-1].isspace():
            hi = 0
            for i in range(len(text) - 1, -1, -1):
                if text[i].isspace():
                    hi = i + 1
                    break
        out[b, 1] = hi
    return out


def completion_offsets(
    tokenizer: Any,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    skip_special_tokens: bool = False,
) -> tuple[list[str], np.ndarray, list[bool], int, int]:
    """Offsets of the sampled completion tokens inside padded rows.

    Args:
        tokenizer: the tokenizer that produced the ids.
        input_ids: int ``[B, T]`` rows (prompt + completion + padding).
        completion_mask: bool ``[B, T]``, True at the completion positions (one block per row).

    Returns:
        ``(texts, offsets, truncated, n_tokens, n_broken)``: the completion texts, int64
        ``[B, T, 2]`` offsets into them (zeros outside the completion, ``(p, p)`` for special
        and invalid-UTF-8 pieces), per row whether the completion was cut (its last token is
        not special), the completion tokens and those without offsets (invalid UTF-8).
    """
    ids = input_ids.detach().cpu().numpy().astype(np.int64)
    mask = completion_mask.detach().cpu().numpy().astype(bool)
    dec = PieceDecoder.for_tokenizer(tokenizer)
    rows, pos = [], []
    for b in range(ids.shape[0]):
        p = np.nonzero(mask[b])[0]
        pos.append(p)
        rows.append(ids[b, p])
    texts, offs, broken = dec(rows, skip_special_tokens=skip_special_tokens)
    out = np.zeros((*ids.shape, 2), dtype=np.int64)
    truncated = []
    for b, (p, o) in enumerate(zip(pos, offs, strict=True)):
        out[b, p] = o
        truncated.append(bool(len(rows[b])) and int(rows[b][-1]) not in dec.special_ids)
    return texts, out, truncated, int(mask.sum()), int(sum(broken))


@dataclass
class OnPolicyBatch:
    """Model-ready rows of an on-policy batch and their alignment on the completions.

    texts: B completion texts (the units' char offsets index these). student / teacher:
    ``input_ids``, ``attention_mask`` int64 ``[B, T]`` (right-padded) and ``completion_mask``
    bool ``[B, T]``. alignment: the :class:`~mta_ext.Alignment` (its ``student`` / ``teacher``
    hold the same rows). truncated: per row whether the completion was cut by the length
    limit. broken: student completion tokens without offsets (invalid UTF-8).
    """

    texts: list[str]
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    alignment: Alignment
    truncated: list[bool]
    broken: int

    def student_labels(self) -> torch.Tensor:
        """int64 ``[B, T_s]``: the sampled ids at the completion positions, -100 elsewhere."""
        return self.student["input_ids"].masked_fill(~self.student["completion_mask"], -100)

    def to(self, device: torch.device | str) -> OnPolicyBatch:
        return OnPolicyBatch(
            self.texts,
            {k: v.to(device) for k, v in self.student.items()},
            {k: v.to(device) for k, v in self.teacher.items()},
            self.alignment.to(device),
            self.truncated,
            self.broken,
        )


def on_policy_batch(
    aligner: Aligner,
    student_prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    teacher_prompt_ids: Sequence[Sequence[int]],
    *,
    spans: Spans | None = None,
    teacher_suffix_ids: Sequence[int] = (),
) -> OnPolicyBatch:
    """Build the student and teacher rows of sampled completions and align their units.

    Args:
        aligner: the :class:`~mta_ext.Aligner` (its tokenizers and span source).
        student_prompt_ids: per example the student's prompt ids (unpadded; its own template).
        completion_ids: per example the ids the student sampled after its prompt (unpadded;
            may end with EOS / an end-of-turn token, may be cut by the length limit).
        teacher_prompt_ids: per example the teacher's prompt ids (its own template).
        spans: candidate spans of the completion texts (``aligner.spans(texts)`` if None; pass
            precomputed ones, e.g. from a :class:`mta_ext.phrases.SpanPool` future).
        teacher_suffix_ids: ids appended to the teacher row when the completion ended with a
            special token (e.g. the teacher's EOS), so both rows end the same way.

    Returns:
        An :class:`OnPolicyBatch`. Student completion text = the decode of the sampled ids
        with special tokens dropped (they get no offsets); the teacher's completion = that
        text encoded without special tokens.
    """
    B = len(completion_ids)
    if len(student_prompt_ids) != B or len(teacher_prompt_ids) != B:
        raise ValueError(
            f"on_policy_batch: {len(student_prompt_ids)} student prompts, {B} completions and "
            f"{len(teacher_prompt_ids)} teacher prompts; expected the same number"
        )
    s_tok, t_tok = aligner.student_tokenizer, aligner.teacher_tokenizer
    dec = PieceDecoder.for_tokenizer(s_tok)
    texts, c_offs, broken = dec([list(c) for c in completion_ids], skip_special_tokens=True)
    truncated = [bool(len(c)) and int(c[-1]) not in dec.special_ids for c in completion_ids]
    if aligner.shared_tokenizer:  # one tokenizer: the teacher scores the sampled ids themselves
        t_ids = [list(c) for c in completion_ids]
        t_offs = [o.tolist() for o in c_offs]
        teacher_suffix_ids = ()
    elif hasattr(t_tok, "backend_tokenizer"):
        enc = t_tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        t_ids, t_offs = enc["input_ids"], enc["offset_mapping"]
    else:  # a bare tokenizers.Tokenizer
        encs = t_tok.encode_batch(texts, add_special_tokens=False)
        t_ids, t_offs = [e.ids for e in encs], [e.offsets for e in encs]
    s_rows, s_offs, t_rows, t_offs_rows, s_cm, t_cm = [], [], [], [], [], []
    for b in range(B):
        sp, tp = list(student_prompt_ids[b]), list(teacher_prompt_ids[b])
        sc, tc = list(completion_ids[b]), list(t_ids[b])
        suffix = list(teacher_suffix_ids) if sc and not truncated[b] else []
        s_rows.append(sp + sc)
        s_offs.append([(0, 0)] * len(sp) + [tuple(o) for o in c_offs[b].tolist()])
        s_cm.append([0] * len(sp) + [1] * len(sc))
        end = len(texts[b])
        t_rows.append(tp + tc + suffix)
        t_offs_rows.append(
            [(0, 0)] * len(tp) + [tuple(o) for o in t_offs[b]] + [(end, end)] * len(suffix)
        )
        t_cm.append([0] * len(tp) + [1] * (len(tc) + len(suffix)))
    s_side = _pad(s_rows, s_offs, _pad_id(s_tok), "right")
    t_side = _pad(t_rows, t_offs_rows, _pad_id(t_tok), "right")
    if spans is None:
        spans = aligner.spans(texts)
    win = cut_windows(texts, truncated)
    alignment = _merge(
        texts, t_side, s_side, spans, aligner.num_threads, aligner.shared_tokenizer, (win, win)
    )

    def side(d: dict[str, torch.Tensor], cm: list[list[int]]) -> dict[str, torch.Tensor]:
        T = d["input_ids"].shape[1]
        m = torch.zeros(B, T, dtype=torch.bool)
        for b, row in enumerate(cm):
            m[b, : len(row)] = torch.tensor(row, dtype=torch.bool)
        return {
            "input_ids": d["input_ids"],
            "attention_mask": d["attention_mask"],
            "completion_mask": m,
        }

    return OnPolicyBatch(
        texts,
        side(alignment.student, s_cm),
        side(alignment.teacher, t_cm),
        alignment,
        truncated,
        int(sum(broken)),
    )


# ----------------------------------------------------------------------------- a training step


def prompt_ids(
    tokenizer: Any, prompts: Sequence[str], *, chat: bool | None = None
) -> list[list[int]]:
    """Each model's own prompt ids: the tokenizer's chat template (a user turn + the generation
    prompt) when it has one and ``chat`` is not False, else the plain text with its specials."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return [list(x) for x in tokenizer(list(prompts))["input_ids"]]
    out = []
    for p in prompts:
        s = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        out.append(list(tokenizer(s, add_special_tokens=False)["input_ids"]))
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]


@torch.no_grad()
def sample_completions(
    student: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    min_new_tokens: int = 0,
) -> list[list[int]]:
    """Sample one completion per prompt with HF ``generate`` (left-padded batch, plain
    sampling: top-k 0, top-p 1). Returns per prompt the sampled ids up to and including the
    first EOS, or ``max_new_tokens`` ids when none came (a cut completion)."""
    device = next(student.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[b, T - len(p) :] = 1
    was_training = student.training
    student.eval()
    out = student.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        pad_token_id=pad,
    )
    student.train(was_training)
    eos = set(_eos_ids(student, tokenizer))
    comps = []
    for row in out[:, T:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        comps.append(row[:cut])
    return comps


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_completion: torch.Tensor,
    teacher_completion: torch.Tensor,
) -> torch.Tensor:
    """Reverse KL ``KL(p_S || p_T)`` of the next-token distributions that predict the sampled
    completion tokens, averaged over them (one tokenizer: the teacher scores the same ids).

    Args:
        student_logits / teacher_logits: ``[B, T_s, V]`` / ``[B, T_t, V]``.
        student_completion / teacher_completion: bool ``[B, T]``, the completion positions.
    """
    ps = student_completion[:, 1:].to(student_logits.device)
    pt = teacher_completion[:, 1:].to(teacher_logits.device)
    s = student_logits[:, :-1][ps].float().log_softmax(-1)
    t = teacher_logits[:, :-1][pt].float().log_softmax(-1).to(s.device)
    if s.shape != t.shape:
        raise ValueError(
            f"reverse_kl: {s.shape[0]} student and {t.shape[0]} teacher completion positions "
            f"over vocabularies {s.shape[-1]} / {t.shape[-1]}: it needs one tokenizer (use ULD "
            "across tokenizers)"
        )
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    return (s.exp() * (s - t)).sum(-1).mean()


def on_policy_step(
    student: Any,
    teacher: Any,
    aligner: Aligner,
    mta_loss: Any,
    student_prompts: Sequence[Sequence[int]],
    teacher_prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    mta_share: float = 0.5,
    kd: str = "auto",
    span_pool: Any = None,
    min_new_tokens: int = 0,
    teacher_suffix_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[str, float], OnPolicyBatch]:
    """One on-policy distillation step's loss: the student samples, the teacher scores,
    ``loss = (1 − w)·KD + w·L_MTA`` with ``w = mta_share``.

    KD (``kd="auto"``): the reverse KL on the sampled tokens when both models share one
    tokenizer, else ULD at the token boundaries both tokenizations share
    (:func:`mta_ext.logit_kd.uld_kd`); ``"none"``: L_MTA alone. With ``span_pool`` (a
    :class:`mta_ext.phrases.SpanPool`) the completions' spans parse in a worker while the
    teacher and the student run. Returns ``(loss, parts, batch)``; ``parts`` holds the loss
    terms and the seconds of each phase: ``generate_s``, ``align_spans_s`` (offsets of the
    sampled ids, the teacher's re-encoding, spans, the merge), ``teacher_s``, ``student_s``
    (forward) and ``losses_s`` (KD + L_MTA forward), each also as process CPU seconds
    (``*_cpu_s``; a span worker's CPU is not counted). The caller runs ``loss.backward()``.
    """
    import time

    from .integrations.distill import teacher_forward
    from .logit_kd import uld_kd

    if kd == "auto":
        kd = "reverse_kl" if aligner.shared_tokenizer else "uld"
    if kd not in ("reverse_kl", "uld", "none"):
        raise ValueError(f"kd must be 'auto', 'reverse_kl', 'uld' or 'none', got {kd!r}")
    if not 0.0 <= mta_share <= 1.0:
        raise ValueError(f"mta_share must be in [0, 1], got {mta_share}")
    use_mta = mta_share > 0 and mta_loss is not None
    parts: dict[str, float] = {}

    class _Clock:  # wall and process-CPU seconds per phase (CPU time: robust to a busy machine)
        def __init__(self) -> None:
            self.w, self.c = time.perf_counter(), time.process_time()

        def add(self, name: str) -> None:
            w, c = time.perf_counter(), time.process_time()
            parts[name + "_s"] = parts.get(name + "_s", 0.0) + w - self.w
            parts[name + "_cpu_s"] = parts.get(name + "_cpu_s", 0.0) + c - self.c
            self.w, self.c = w, c

    clock = _Clock()
    comps = sample_completions(
        student,
        aligner.student_tokenizer,
        student_prompts,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
    )
    clock.add("generate")
    future = None
    if use_mta and span_pool is not None:
        texts = PieceDecoder.for_tokenizer(aligner.student_tokenizer)(
            comps, skip_special_tokens=True
        )[0]
        future = span_pool.submit(texts)
    no_spans = [{"word": [], "phrase": []}] * len(comps)
    # spans now (inline) unless a worker parses them; KD alone needs only the offsets
    batch = on_policy_batch(
        aligner,
        student_prompts,
        comps,
        teacher_prompts,
        spans=no_spans if (future is not None or not use_mta) else None,
        teacher_suffix_ids=teacher_suffix_ids,
    )
    device = next(student.parameters()).device
    clock.add("align_spans")
    t_out = teacher_forward(
        teacher,
        batch.teacher["input_ids"].to(device),
        batch.teacher["attention_mask"].to(device),
        need_logits=kd != "none" or getattr(mta_loss, "weighting", None) == "entropy",
    )
    clock.add("teacher")
    s_out = student(
        input_ids=batch.student["input_ids"].to(device),
        attention_mask=batch.student["attention_mask"].to(device),
        output_hidden_states=use_mta,
        use_cache=False,
    )
    clock.add("student")
    if future is not None:  # collect the worker's spans and redo the (fast) merge with them
        batch = on_policy_batch(
            aligner,
            student_prompts,
            comps,
            teacher_prompts,
            spans=future.result(),
            teacher_suffix_ids=teacher_suffix_ids,
        )
        clock.add("align_spans")
    loss = s_out.logits.sum() * 0.0
    if kd == "reverse_kl":
        kd_term = reverse_kl(
            s_out.logits,
            t_out.logits,
            batch.student["completion_mask"],
            batch.teacher["completion_mask"],
        )
    elif kd == "uld":
        kd_term = uld_kd()(s_out, t_out, {"alignment": batch.alignment.to(device)})
    else:
        kd_term = None
    if kd_term is not None:
        loss = loss + (1.0 - mta_share if use_mta else 1.0) * kd_term
        parts["kd"] = float(kd_term.detach())
    if use_mta:
        mta, per_pair = mta_loss(s_out, t_out, batch.alignment.to(device), return_components=True)
        loss = loss + (mta_share if kd_term is not None else 1.0) * mta
        parts["mta"] = float(mta.detach())
        for part in ("dsa", "hid"):
            vals = [float(v) for k, v in per_pair.items() if k.startswith(part + "/")]
            if vals:
                parts[part] = sum(vals) / len(vals)
    clock.add("losses")
    parts["loss"] = float(loss.detach())
    parts["completion_tokens"] = float(sum(len(c) for c in comps))
    parts["units"] = float(sum(lay.num_units for lay in batch.alignment.units.values()))
    return loss, parts, batch
