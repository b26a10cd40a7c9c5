"""Held-out evaluation of a causal LM: token-weighted cross-entropy and perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["heldout_ce"]


@torch.no_grad()
def heldout_ce(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean next-token cross-entropy of ``model`` over all tokens of ``texts`` (its tokenizer).

    Every predicted token counts once (a token-weighted mean, not a mean of per-batch means), so
    the number does not depend on ``batch_size``. Returns ``{"ce", "ppl", "tokens"}``.
    """
    if not texts:
        raise ValueError("heldout_ce: no texts")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
            ).to(device)
            logits = model(**enc, use_cache=False).logits.float()  # a no-op for fp32 logits
            # shift the targets, not the logits: slicing [:, :-1] would copy the [B, T, V] logits
            ids, mask = enc["input_ids"], enc["attention_mask"]
            target = torch.full_like(ids, -100)
            target[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    target.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
            )
            count += int((target != -100).sum())
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    ce = total / max(count, 1)
    return {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": count}
