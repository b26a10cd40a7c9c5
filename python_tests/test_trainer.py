"""MTADistillationTrainer / distillation_loss: a 3-step HF Trainer run on tiny real-tokenizer
models, loss composition, saving the projectors with the student, coverage."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models

import mta_ext


@pytest.fixture(scope="module")
def parts():
    require_mta_api()
    require("spacy", "accelerate")
    from mta_ext.integrations import MTACollator

    teacher, t_tok, student, s_tok = tiny_models()
    collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=24)
    return teacher, student, s_tok, collator


def _mta_loss(teacher, student, seed=0):
    torch.manual_seed(seed)
    return mta_ext.MTALoss.from_configs(student.config, teacher.config)


def test_trainer_three_steps(parts, tmp_path):
    from transformers import TrainingArguments

    from mta_ext.data import TextDataset
    from mta_ext.integrations import MTADistillationTrainer, load_mta_loss

    teacher, student0, _, collator = parts
    student = copy.deepcopy(student0)
    mta_loss = _mta_loss(teacher, student)
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    p_before = {k: v.clone() for k, v in mta_loss.state_dict().items()}
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )  # remove_unused_columns defaults to True: the trainer must turn it off itself
    trainer = MTADistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        mta_loss=mta_loss,
        train_dataset=TextDataset(TEXTS),
        data_collator=collator,
    )
    assert args.remove_unused_columns is False
    trainer.train()
    logs = [h for h in trainer.state.log_history if "ce" in h]
    assert len(logs) == 3
    for h in logs:
        for k in ("loss", "ce", "mta", "dsa", "hid"):
            assert math.isfinite(h[k]), (k, h)
        assert h["dsa"] >= 0 and 0 <= h["hid"] <= 2
    changed = [
        k
        for k, v in student.state_dict().items()
        if not k.startswith("mta_loss.") and not torch.equal(v, s_before[k])
    ]
    assert len(changed) > 0.5 * len(s_before)
    for k, v in mta_loss.state_dict().items():  # projectors trained
        assert not torch.equal(v, p_before[k]), k
    for k, v in teacher.state_dict().items():  # teacher frozen
        assert torch.equal(v, t_before[k]), k
    assert not any(p.requires_grad for p in teacher.parameters())

    metrics = trainer.evaluate(eval_dataset=TextDataset(TEXTS[:3]))
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert saved and not any(k.startswith("mta_loss.") for k in saved)
    restored = load_mta_loss(out)
    for k, v in mta_loss.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    assert list(restored.schedule) == list(mta_loss.schedule)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    emb = "model.embed_tokens.weight"
    assert torch.equal(reloaded.state_dict()[emb], student.state_dict()[emb])


def test_distillation_loss_composition(parts):
    from mta_ext.integrations import distillation_loss
    from mta_ext.logit_kd import same_vocab_kl

    teacher, student, _, collator = parts
    batch = collator([{"text": t} for t in TEXTS[:2]])
    mta_loss = _mta_loss(teacher, student)
    loss, comps, _ = distillation_loss(student, teacher, batch, mta_loss, mta_weight=0.5)
    torch.testing.assert_close(loss.detach(), comps["ce"] + 0.5 * comps["mta"])
    n_pairs = len(mta_loss.schedule)
    dsa = torch.stack([comps[f"dsa/{i}"] for i in range(n_pairs)]).mean()
    hid = torch.stack([comps[f"hid/{i}"] for i in range(n_pairs)]).mean()
    torch.testing.assert_close(comps["dsa"], dsa)
    # L_MTA = w_span * mean_pairs(DSA + λ_hid Hid)
    torch.testing.assert_close(
        comps["mta"], mta_loss.span_weight * (dsa + mta_loss.hid_weight * hid), rtol=1e-5, atol=1e-6
    )
    # CE-only: no teacher needed at all
    loss0, comps0, _ = distillation_loss(student, None, batch, None, mta_weight=0.0)
    torch.testing.assert_close(loss0.detach(), comps["ce"])
    assert set(comps0) == {"ce", "loss"}
    with pytest.raises(ValueError, match="logit_kd"):
        distillation_loss(student, teacher, batch, mta_loss, kd_weight=0.5)
    with pytest.raises(ValueError, match="shared tokenizer"):  # the two tokenizers differ
        distillation_loss(
            student, teacher, batch, mta_loss, kd_weight=0.5, logit_kd=same_vocab_kl()
        )
    with pytest.raises(ValueError, match="needs an mta_loss"):
        distillation_loss(student, teacher, batch, None)


def test_same_vocab_kl_zero_for_identical_models():
    from types import SimpleNamespace

    from mta_ext.logit_kd import same_vocab_kl

    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    kd = same_vocab_kl(2.0)
    out = SimpleNamespace(logits=logits)
    assert float(kd(out, out, {"attention_mask": mask})) == pytest.approx(0.0, abs=1e-6)
    other = SimpleNamespace(logits=torch.randn(2, 5, 11))
    assert float(kd(other, out, {"attention_mask": mask})) > 0


def test_unit_coverage_counts_tokens_in_any_unit():
    from types import SimpleNamespace

    from mta_ext.integrations import unit_coverage

    def lay(tr, sr, cu):
        t = torch.tensor
        return SimpleNamespace(
            cu_units=t(cu), teacher_ranges=t(tr).reshape(-1, 2), student_ranges=t(sr).reshape(-1, 2)
        )

    al = SimpleNamespace(
        teacher={"attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])},
        student={"attention_mask": torch.tensor([[1, 1, 1], [1, 1, 1]])},
        # overlapping units count once; example 1's teacher token 2 is padding
        units={
            "word": lay([[1, 2], [4, 5]], [[0, 1], [3, 4]], [0, 1, 2]),
            "phrase": lay([[1, 3]], [[0, 2]], [0, 1, 1]),
        },
    )
    cov = unit_coverage(al)
    assert cov["teacher"] == pytest.approx(3 / 6)  # tokens 1, 2 and 4 of 6 valid
    assert cov["student"] == pytest.approx(3 / 6)  # tokens 0, 1 and 3
    # the per-token mask both unit_coverage and `mta-ext explain` (per example) are built on
    from mta_ext.cli import _coverage_rows
    from mta_ext.integrations.distill import tokens_in_units

    assert tokens_in_units(al, "teacher").tolist() == [
        [False, True, True, False],
        [True, False, False, False],
    ]
    rows = _coverage_rows(al)
    assert rows["teacher"] == pytest.approx([0.5, 0.5])  # 2 of 4 valid, 1 of 2 valid
    assert rows["student"] == pytest.approx([2 / 3, 1 / 3])
