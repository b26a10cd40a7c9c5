"""heldout_ce: a token-weighted mean over every predicted token, whatever the batching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _integ_models import TEXTS, require, tiny_models

from mta_ext.integrations import heldout_ce


def _one_by_one(model, tok, texts, max_length):
    """The definition, one text at a time (no padding): Σ token CEs / number of tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            enc = tok(
                t, return_tensors="pt", truncation=max_length is not None, max_length=max_length
            )
            logits = model(**enc).logits[0, :-1].double()
            target = enc["input_ids"][0, 1:]
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            count += target.numel()
    return total / count, count


@pytest.mark.parametrize("max_length", [None, 9])
def test_heldout_ce_is_the_token_weighted_mean(max_length):
    require("transformers")
    _, _, student, s_tok = tiny_models()
    texts = [*TEXTS, "a", "ok then"]  # ragged, and texts with one token predict nothing
    want, n = _one_by_one(student, s_tok, texts, max_length)
    for bs in (1, 3, len(texts)):
        got = heldout_ce(student, s_tok, texts, max_length=max_length, batch_size=bs)
        assert got["tokens"] == n
        assert math.isclose(got["ce"], want, rel_tol=1e-5), (bs, got["ce"], want)
        assert math.isclose(got["ppl"], math.exp(got["ce"]), rel_tol=1e-12)


def test_heldout_ce_restores_state_and_rejects_empty():
    require("transformers")
    _, _, student, s_tok = tiny_models()
    student.train()
    side = s_tok.padding_side
    s_tok.padding_side = "left"
    try:
        heldout_ce(student, s_tok, TEXTS[:2])
        assert student.training and s_tok.padding_side == "left"
    finally:
        s_tok.padding_side = side
    with pytest.raises(ValueError, match="no texts"):
        heldout_ce(student, s_tok, [])
