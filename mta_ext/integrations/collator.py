"""``MTACollator``: raw text examples -> student batch + teacher batch + cross-tokenizer alignment.

Works as ``collate_fn`` of a plain ``DataLoader`` and as ``data_collator`` of an HF ``Trainer``.
With the Trainer, pass ``TrainingArguments(remove_unused_columns=False)``: the examples carry a
``"text"`` column that the student's ``forward`` does not take, and the Trainer would otherwise
drop it before the collator sees it (``MTADistillationTrainer`` sets this for you).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..alignment import Aligner

__all__ = ["MTACollator"]


class MTACollator:
    """Collate ``{"text": str, ["spans": ...]}`` examples for MTA distillation.

    Args:
        aligner: a ``mta_ext.Aligner(teacher_tokenizer, student_tokenizer, ...)``; it tokenizes
            both sides (with offsets) and builds the unit layouts.
        max_length: truncate both sides to this many tokens (``None``: no truncation).
        padding_side: ``"right"`` (default; what causal-LM training with labels expects) or
            ``"left"``; applied to both sides.
        add_special_tokens: passed to both tokenizers (BOS etc.; special tokens belong to no unit).
        text_key: the example field holding the text.

    Each example may carry ``"spans"``: the cached output of ``mta_ext.annotate_spans`` for its
    text (``{"word": [[a, b], ...], "phrase": [[a, b], ...]}``), so no spaCy runs per step. Give
    spans for all examples of a batch or for none.

    Returns a dict:
        ``input_ids``, ``attention_mask`` ``[B, T_s]`` int64 (student);
        ``labels`` ``[B, T_s]`` int64: ``input_ids`` with padding set to ``-100`` (taken from the
        attention mask, so it is right even when the pad token is the EOS token);
        ``teacher_input_ids``, ``teacher_attention_mask`` ``[B, T_t]`` int64;
        ``alignment``: the ``Alignment`` (CPU tensors; ``alignment.to(device)`` before the loss).
    """

    def __init__(
        self,
        aligner: Aligner,
        *,
        max_length: int | None = None,
        padding_side: str = "right",
        add_special_tokens: bool = True,
        text_key: str = "text",
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        self.aligner = aligner
        self.max_length = max_length
        self.padding_side = padding_side
        self.add_special_tokens = add_special_tokens
        self.text_key = text_key

    def _texts_and_spans(self, examples: Sequence[Any]) -> tuple[list[str], list[Any] | None]:
        if len(examples) == 0:
            raise ValueError("MTACollator: got an empty batch")
        texts: list[str] = []
        spans: list[Any] = []
        for i, ex in enumerate(examples):
            if isinstance(ex, str):
                texts.append(ex)
                spans.append(None)
                continue
            if not isinstance(ex, Mapping) or not isinstance(ex.get(self.text_key), str):
                raise ValueError(
                    f"MTACollator: example {i} must be a str or a dict with a string "
                    f"'{self.text_key}' field (with HF Trainer, set remove_unused_columns=False), "
                    f"got {type(ex).__name__}"
                    + (f" with keys {sorted(ex)}" if isinstance(ex, Mapping) else "")
                )
            texts.append(ex[self.text_key])
            spans.append(ex.get("spans"))
        have = [s is not None for s in spans]
        if all(have):
            return texts, spans
        if any(have):
            missing = have.index(False)
            raise ValueError(
                f"MTACollator: example {missing} has no 'spans' while others do; give cached "
                "spans for all examples of a batch or for none"
            )
        return texts, None

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        texts, spans = self._texts_and_spans(examples)
        alignment = self.aligner(
            texts,
            max_length=self.max_length,
            padding_side=self.padding_side,
            add_special_tokens=self.add_special_tokens,
            spans=spans,
        )
        student, teacher = alignment.student, alignment.teacher
        input_ids = student["input_ids"]
        attention_mask = student["attention_mask"]
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "teacher_input_ids": teacher["input_ids"],
            "teacher_attention_mask": teacher["attention_mask"],
            "alignment": alignment,
        }


def batch_to(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a collated batch (tensors and the alignment) to ``device``."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        out[k] = v.to(device) if isinstance(v, torch.Tensor) or hasattr(v, "to") else v
    return out
