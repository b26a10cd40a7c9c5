"""MTA on the completions TRL's trainers sample themselves (on-policy), on tiny models (CPU):
GKD (one tokenizer) with ``lmbda`` 1 and 0.5 and ``seq_kd``, GOLD (Mistral SentencePiece teacher,
Qwen2 byte-level student) with ``lmbda`` 1 and 0.5, and TRL's stable ``DistillationTrainer``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _integ_models import tiny_models
from trl_helpers import (
    QUESTIONS,
    chat_dataset,
    completion_dataset,
    require_trl,
    shared_tokenizer_pair,
    trainer_args,
)

import mta_ext


@pytest.fixture(scope="module")
def trl_ready():
    require_trl()


def _logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def _check(trainer, kinds: tuple[str, ...], steps: int) -> None:
    mta = _logged(trainer, "mta")
    assert len(mta) == steps and all(math.isfinite(v) and v > 0 for v in mta), mta
    for kind in kinds:
        got = _logged(trainer, f"mta_matched/{kind}")
        assert got, (kind, trainer.state.log_history)
        # a random tiny student samples lone bytes of multi-byte characters too: those tokens
        # get no offsets (invalid UTF-8), the rest are located
        assert all(0.3 < v <= 1.0 for v in got), (kind, got)


@pytest.mark.parametrize("lmbda", [1.0, 0.5])
def test_gkd_on_policy(trl_ready, tmp_path, lmbda):
    from trl.experimental.gkd import GKDConfig

    from mta_ext.integrations.trl import MTAGKDTrainer

    tok, teacher, student = shared_tokenizer_pair()
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    steps = 4
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(
            **trainer_args(tmp_path, steps), lmbda=lmbda, max_new_tokens=12, max_length=64
        ),
        processing_class=tok,
        train_dataset=chat_dataset(),
        mta_loss=mta_loss,
        on_policy_phrases=None,  # words only on sampled text (no spaCy)
    )
    trainer.train()
    _check(trainer, ("on_policy",) if lmbda == 1.0 else ("on_policy", "off_policy"), steps)


def test_gkd_seq_kd(trl_ready, tmp_path):
    from trl.experimental.gkd import GKDConfig

    from mta_ext.integrations.trl import MTAGKDTrainer

    tok, teacher, student = shared_tokenizer_pair()
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(
            **trainer_args(tmp_path, 2), lmbda=0.0, seq_kd=True, max_new_tokens=12, max_length=64
        ),
        processing_class=tok,
        train_dataset=chat_dataset(),
        mta_loss=mta_ext.MTALoss.from_configs(student.config, teacher.config),
        on_policy_phrases=None,
    )
    trainer.train()
    _check(trainer, ("seq_kd",), 2)


@pytest.mark.parametrize("lmbda", [1.0, 0.5])
def test_gold_on_policy(trl_ready, tmp_path, lmbda):
    from trl.experimental.gold import GOLDConfig

    from mta_ext.integrations.trl import MTAGOLDTrainer

    teacher, _, student0, s_tok = tiny_models()
    student = copy.deepcopy(student0)
    ds = completion_dataset()
    steps = 4
    trainer = MTAGOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=GOLDConfig(
            **trainer_args(tmp_path, steps),
            lmbda=lmbda,
            max_length=64,
            max_completion_length=12,
            use_uld_loss=True,
            use_extended_uld=False,
            teacher_tokenizer_name_or_path=str(teacher.config._name_or_path),
        ),
        processing_class=s_tok,
        train_dataset=ds,
        mta_loss=mta_ext.MTALoss.from_configs(student.config, teacher.config),
        on_policy_phrases=None,
    )
    trainer.train()
    # the random student samples arbitrary tokens: many are byte pieces and specials, so the
    # matched share is lower than off-policy, but every sampled token is located
    kinds = ("on_policy",) if lmbda == 1.0 else ("on_policy", "off_policy")
    mta = _logged(trainer, "mta")
    assert len(mta) == steps and all(math.isfinite(v) for v in mta), mta
    for kind in kinds:
        assert _logged(trainer, f"mta_matched/{kind}"), (kind, trainer.state.log_history)
    if lmbda == 1.0:
        assert "on_policy_loss" in trainer.state.log_history[0]


def test_trl_distillation_trainer(trl_ready, tmp_path):
    from datasets import Dataset
    from trl import DistillationConfig

    from mta_ext.integrations.trl import MTATRLDistillationTrainer

    tok, teacher, student = shared_tokenizer_pair()
    tok.padding_side = "left"
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    p_before = {k: v.clone() for k, v in mta_loss.state_dict().items()}
    trainer = MTATRLDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**trainer_args(tmp_path, 3), max_completion_length=12),
        processing_class=tok,
        train_dataset=ds,
        mta_loss=mta_loss,
        span_workers=1,  # spaCy phrases of the sampled text, parsed while the forwards run
    )
    trainer.train()
    assert trainer._span_pool is None  # the worker stopped with train()
    _check(trainer, ("on_policy",), 3)
    for k, v in mta_loss.state_dict().items():
        assert not torch.equal(v, p_before[k]), k  # the projectors trained


def test_entropy_weighting_refused_in_distillation_trainer(trl_ready, tmp_path):
    from trl import DistillationConfig

    from mta_ext.integrations.trl import MTATRLDistillationTrainer

    tok, teacher, student = shared_tokenizer_pair()
    loss = mta_ext.MTALoss.from_configs(student.config, teacher.config, weighting="entropy")
    with pytest.raises(ValueError, match="teacher's logits"):
        MTATRLDistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=DistillationConfig(**trainer_args(tmp_path, 1), max_completion_length=4),
            processing_class=tok,
            mta_loss=loss,
        )
