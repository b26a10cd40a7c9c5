"""A real ``Alignment`` built without any tokenizer download (shared by the host-sync tests).

Teacher tokens are whitespace words, student tokens are at most 3 characters: two different
tokenizations of the same texts, merged by the C++ aligner (``align_encoded``) into word and
phrase layouts with their host metadata, plus random hidden states for a loss step.
"""

from __future__ import annotations

import re

import torch

import mta_ext

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Tiny models learn structure from larger teachers.",
    "Alignment of units across two tokenizers keeps the geometry.",
]


def _encode(texts: list[str], piece) -> dict[str, torch.Tensor]:
    offs = [piece(t) for t in texts]
    T = max(len(o) for o in offs)
    B = len(texts)
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    off = torch.zeros(B, T, 2, dtype=torch.long)
    for b, o in enumerate(offs):
        for t, (a, e) in enumerate(o):
            ids[b, t] = 1 + (a * 7 + e) % 50
            mask[b, t] = 1
            off[b, t, 0], off[b, t, 1] = a, e
    return {"input_ids": ids, "attention_mask": mask, "offset_mapping": off}


def _words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def _chunks(text: str) -> list[tuple[int, int]]:
    out = []
    for a, e in _words(text):
        out += [(i, min(i + 3, e)) for i in range(a, e, 3)]
    return out


def _spans(text: str) -> dict[str, list[list[int]]]:
    words = [[a, e] for a, e in _words(text)]
    phrases = [[words[i][0], words[min(i + 2, len(words) - 1)][1]] for i in range(0, len(words), 3)]
    return {"word": words, "phrase": phrases}


def real_alignment() -> mta_ext.Alignment:
    """An ``Alignment`` of :data:`TEXTS` (word and phrase units, CPU tensors)."""
    return mta_ext.align_encoded(
        TEXTS, _encode(TEXTS, _words), _encode(TEXTS, _chunks), [_spans(t) for t in TEXTS]
    )


def hidden_states(al, *, device="cpu", dtype=torch.float32, seed=0, layers=3, ds=16, dt=24):
    """Random ``(student, teacher)`` hidden-state tuples shaped for ``al`` (student leaves)."""
    g = torch.Generator().manual_seed(seed)
    B, Tt = al.teacher["input_ids"].shape
    Ts = al.student["input_ids"].shape[1]
    t_hs = tuple(torch.randn(B, Tt, dt, generator=g).to(device, dtype) for _ in range(layers))
    s_hs = tuple(
        torch.randn(B, Ts, ds, generator=g).to(device, dtype).requires_grad_()
        for _ in range(layers)
    )
    return s_hs, t_hs


SCHEDULE = [(1, 1, "word"), (2, 2, "phrase")]
