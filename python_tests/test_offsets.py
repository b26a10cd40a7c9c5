"""Offsets of sampled ids (``mta_ext.offsets``) and on-policy batches (``mta_ext.onpolicy``).

* canonical ids: the offsets equal the tokenizer's own ``offset_mapping`` and the text equals
  ``tokenizer.decode`` (hypothesis, on every tokenizer the alignment tests use);
* non-canonical ids (a word split into pieces, the bytes of one character as separate tokens):
  the text is the same, every piece spans its chars, the units survive;
* invalid UTF-8 (a sample cut inside a character, random ids): no crash, the broken pieces get
  no offsets, the decode still equals the tokenizer's;
* the prompt/completion seam, a completion cut mid-word, gradients through the sampled ids.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import tokenizers_util as tu
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mta_ext
from mta_ext.offsets import PieceDecoder, offsets_for_ids

_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "      \t\n.,;:!?'\"-()éèàüßçñ你好世界中文😀🎉🦜👍🏽\u0301ǅ"
)
TEXTS = st.text(alphabet=st.sampled_from(_ALPHABET), min_size=0, max_size=40)


def _encode(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if hasattr(tok, "backend_tokenizer"):
        e = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(e["input_ids"]), [tuple(o) for o in e["offset_mapping"]]
    e = tok.encode(text, add_special_tokens=False)
    return list(e.ids), [tuple(o) for o in e.offsets]


def _decode(tok, ids) -> str:
    if hasattr(tok, "backend_tokenizer"):
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return tok.decode(ids, skip_special_tokens=False)


def _has_decoder(tok) -> bool:
    bt = tok.backend_tokenizer if hasattr(tok, "backend_tokenizer") else tok
    return bt.decoder is not None


@pytest.fixture(scope="module", params=sorted(tu.ALL))
def tok(request):
    return tu.ALL[request.param]()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXTS)
def test_canonical_ids_give_the_tokenizers_offsets(tok, text):
    ids, _ = _encode(tok, text)
    ours_text, ours = offsets_for_ids(tok, ids)
    if _has_decoder(tok):
        assert ours_text == _decode(tok, ids)
    # the ids are canonical for the decoded text when re-encoding it gives them back
    ids2, offs2 = _encode(tok, ours_text)
    if ids2 != ids:
        return
    specials = PieceDecoder.for_tokenizer(tok).special_ids  # ([UNK] in the text): (p, p)
    for t, (i, got, want) in enumerate(zip(ids, ours.tolist(), offs2, strict=True)):
        if i in specials:
            assert got[0] == got[1]
        else:
            assert tuple(got) == tuple(want), (t, ours_text, ids, ours.tolist(), offs2)


@pytest.mark.parametrize("name", ["qwen", "cl100k", "tiny_bpe", "mistral", "tiny_unigram"])
def test_lossless_tokenizers_round_trip(name):
    """Byte-level BPE and byte-fallback SentencePiece reproduce the encoded text exactly."""
    tok = tu.ALL[name]()
    text = "Unicode: café, 你好世界, emoji 😀🎉 🦜, tabs\tand\nnewlines."
    if name == "tiny_unigram":  # no byte fallback: stay inside its alphabet
        text = "Phrases and words are semantic units shared by both models."
    ids, offs = _encode(tok, text)
    got_text, got = offsets_for_ids(tok, ids)
    assert got_text == text
    assert [tuple(o) for o in got.tolist()] == offs


def _qwen():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tu.qwen())


def test_non_canonical_pieces_span_their_chars():
    tok = _qwen()
    byte_id = {b: tok.convert_tokens_to_ids(c) for b, c in _byte_chars().items()}
    parrot = "🦜".encode()
    # " The" + " q" "u" "i" "ck" + the parrot's 4 bytes as 4 single-byte tokens + " ok"
    ids = (
        tok(" The")["input_ids"]
        + [tok.convert_tokens_to_ids(t) for t in ["Ġq", "u", "i", "ck"]]
        + [byte_id[b] for b in parrot]
        + tok(" ok")["input_ids"]
    )
    text, offs = offsets_for_ids(tok, ids)
    assert text == " The quick🦜 ok" == tok.decode(ids)
    spans = [text[a:b] for a, b in offs.tolist()]
    assert spans == [" The", " q", "u", "i", "ck", "🦜", "🦜", "🦜", "🦜", " ok"]


def _byte_chars() -> dict[int, str]:
    from mta_ext.offsets import _bytes_to_unicode

    return _bytes_to_unicode()


def test_cut_multibyte_char_gets_no_offsets():
    tok = _qwen()
    byte_id = {b: tok.convert_tokens_to_ids(c) for b, c in _byte_chars().items()}
    ids = tok("go")["input_ids"] + [byte_id[b] for b in "🦜".encode()[:3]]  # cut after 3 bytes
    text, offs = offsets_for_ids(tok, ids)
    assert text == tok.decode(ids) == "go\ufffd"
    assert offs.tolist()[-3:] == [[2, 2]] * 3  # the broken pieces: no offsets
    assert offs.tolist()[0] == [0, 2]
    # SentencePiece byte fallback: a run of byte pieces that is not valid UTF-8 -> one U+FFFD each
    m = tu.mistral()
    bf = [m.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "🦜".encode()[:2]]
    ids = m("Hi", add_special_tokens=False)["input_ids"] + bf
    text, offs = offsets_for_ids(m, ids)
    assert text == _decode(m, ids) == "Hi\ufffd\ufffd"
    assert offs.tolist()[-2:] == [[2, 2], [3, 3]]  # each at its own U+FFFD, no offsets


@pytest.mark.parametrize("name", ["qwen", "mistral", "tiny_bpe", "tiny_wordpiece", "tiny_unigram"])
def test_random_ids_never_crash(name):
    tok = tu.ALL[name]()
    dec = PieceDecoder.for_tokenizer(tok)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(dec.vocab_size) for _ in range(rng.randrange(0, 12))]
        text, offs = offsets_for_ids(tok, ids)
        assert offs.shape == (len(ids), 2)
        a, b = offs[:, 0], offs[:, 1]
        assert (a >= 0).all() and (a <= b).all() and (b <= len(text)).all()
        ne = a < b  # non-empty spans are monotone, as the aligner requires
        assert (np.diff(a[ne]) >= 0).all() and (np.diff(b[ne]) >= 0).all()
        if name in ("qwen", "mistral"):
            assert text == _decode(tok, ids)


def test_unknown_id_is_an_error_naming_the_position():
    tok = tu.tiny_bpe()
    with pytest.raises(ValueError, match=r"id 99999 at position 1 is not in the tokenizer"):
        offsets_for_ids(tok, [5, 99999])
    texts, offs = offsets_for_ids(tok, [[5, 6], [], torch.tensor([7])])  # a batch
    assert len(texts) == 3 and offs[1].shape == (0, 2)


# ----------------------------------------------------------------------------- on-policy batches


@pytest.fixture(scope="module")
def pair():
    from mta_ext.onpolicy import on_policy_batch

    s_tok, t_tok = _qwen(), tu.mistral()
    return on_policy_batch, mta_ext.Aligner(t_tok, s_tok, phrases=None), s_tok, t_tok


def _kept(al, i: int = 0) -> list[str]:
    lay = al.units["word"]
    k0, k1 = int(lay.cu_units[i]), int(lay.cu_units[i + 1])
    return [al.texts[i][a:b] for a, b in lay.spans[k0:k1].tolist()]


def test_seam_each_model_its_own_prompt(pair):
    on_policy_batch, aligner, s_tok, t_tok = pair
    s_prompt = s_tok("<|im_start|>user\nCapital?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    t_prompt = t_tok("[INST] Capital? [/INST]")["input_ids"]  # the teacher's own template
    comp = s_tok(" Paris is the capital.")["input_ids"] + [
        s_tok.convert_tokens_to_ids("<|im_end|>")
    ]
    b = on_policy_batch(aligner, [s_prompt], [comp], [t_prompt], teacher_suffix_ids=[2])
    assert b.texts == [" Paris is the capital."] and b.truncated == [False]
    assert _kept(b.alignment) == ["Paris", "is", "the", "capital"]
    # no unit reaches into either prompt: every kept range lies in the completion
    for side in ("student", "teacher"):
        comp_mask = getattr(b, side)["completion_mask"].reshape(-1)
        for s, e in getattr(b.alignment.units["word"], f"{side}_ranges").tolist():
            assert comp_mask[s:e].all()
    # the student row holds the sampled ids after its prompt, labels only on them
    assert b.student["input_ids"][0, len(s_prompt) :].tolist() == comp
    assert (b.student_labels()[0, : len(s_prompt)] == -100).all()
    # the teacher row: its prompt, the completion re-encoded, its EOS
    t_row = b.teacher["input_ids"][0].tolist()
    assert t_row[: len(t_prompt)] == t_prompt and t_row[-1] == 2


def test_completion_cut_mid_word_drops_that_unit(pair):
    on_policy_batch, aligner, s_tok, _ = pair
    full = s_tok(" The elephant walked")["input_ids"]
    cut = full[:-1] + s_tok(" wal")["input_ids"][:1]  # stopped by the length limit in a word
    b = on_policy_batch(aligner, [[1]], [cut], [[1]])
    assert b.truncated == [True]
    assert "wal" not in _kept(b.alignment) and _kept(b.alignment)[:2] == ["The", "elephant"]
    reasons = mta_ext.explain(b.alignment, 0)
    assert "dropped" in reasons and "truncated" in reasons


def test_non_canonical_sample_units_dropped_not_misassigned(pair):
    on_policy_batch, aligner, s_tok, _ = pair
    byte_id = {b: s_tok.convert_tokens_to_ids(c) for b, c in _byte_chars().items()}
    # " quick" sampled as pieces; a parrot cut inside (3 of 4 bytes) in the middle of the text
    ids = (
        [s_tok.convert_tokens_to_ids(t) for t in ["Ġq", "u", "i", "ck"]]
        + s_tok(" fox")["input_ids"]
        + [byte_id[x] for x in " 🦜".encode()[:4]]
        + s_tok("jumps high.")["input_ids"]
        + [s_tok.convert_tokens_to_ids("<|im_end|>")]
    )
    b = on_policy_batch(aligner, [[1]], [ids], [[1]])
    text = b.texts[0]
    assert text.startswith(" quick fox \ufffd") and b.broken == 3
    kept = _kept(b.alignment)
    assert kept[:2] == ["quick", "fox"] and "high" in kept
    # every kept unit's student tokens decode to exactly the unit's text
    lay = b.alignment.units["word"]
    off = b.alignment.student["offsets"][0]
    for (a, e), (s, t) in zip(lay.spans.tolist(), lay.student_ranges.tolist(), strict=True):
        covered = "".join(text[x:y] for x, y in off[s:t].tolist()).strip()
        assert covered == text[a:e]


def test_gradients_reach_the_student_through_the_sampled_ids(pair):
    import copy

    from _integ_models import tiny_models

    from mta_ext.integrations import teacher_forward

    on_policy_batch, aligner, s_tok, t_tok = pair
    teacher, _, student, _ = tiny_models()  # Mistral-tokenizer teacher, Qwen2 student
    student = copy.deepcopy(student).train()

    prompt = s_tok("Question: describe the sea.\nAnswer:")["input_ids"]
    torch.manual_seed(0)
    with torch.no_grad():
        out = student.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=True, pad_token_id=0
        )
    sampled = out[0, len(prompt) :].tolist()
    # make sure some units exist whatever the random model sampled
    sampled = sampled + s_tok(" The sea is deep and blue.")["input_ids"]
    t_prompt = t_tok("Question: describe the sea.\nAnswer:")["input_ids"]
    b = on_policy_batch(aligner, [prompt], [sampled], [t_prompt])
    assert b.alignment.units["word"].num_units > 0
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    s_out = student(
        input_ids=b.student["input_ids"],
        attention_mask=b.student["attention_mask"],
        labels=b.student_labels(),
        output_hidden_states=True,
    )
    t_out = teacher_forward(teacher, b.teacher["input_ids"], b.teacher["attention_mask"])
    mta = mta_loss(s_out, t_out, b.alignment)
    mta.backward()
    g = student.get_input_embeddings().weight.grad
    rows = g.abs().sum(1)
    assert rows[torch.tensor(sampled)].sum() > 0  # the sampled ids' embeddings get a gradient
    unused = sorted(set(range(g.shape[0])) - set(prompt) - set(sampled))[:100]
    assert rows[unused].sum() == 0
