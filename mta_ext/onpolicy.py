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
  encoding's ``offset_mapping``.
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
    if hasattr(t_tok, "backend_tokenizer"):
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
