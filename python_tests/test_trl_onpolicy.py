"""MTA on the completions TRL's trainers sample themselves (on-policy), on tiny models (CPU):
GKD (one tokenizer) with ``lmbda`` 1 and 0.5 and ``seq_kd``, GOLD (Mistral SentencePiece teacher,
Qwen2 byte-level student) with ``lmbda`` 1 and 0.5, and TRL's stable ``DistillationTrainer``."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models

import mta_ext

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [
    "Tell me about Paris.",
    "Describe a fox.",
    "Write about the sea.",
    "What can students learn?",
    "Suggest a breakfast.",
    "What did the committee do?",
]


@pytest.fixture(scope="module")
def trl_ready():
    require_mta_api()
    require("trl", "datasets", "spacy", "accelerate")
    from mta_ext.integrations.trl import check_trl_version

    check_trl_version()


def _common(tmp_path, steps: int) -> dict:
    return dict(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )


def _tiny_llama_pair():
    from tiny_fixtures import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer("bpe", texts=TEXTS * 3 + QUESTIONS * 3, vocab_size=400)
    tok.chat_template = CHATML

    def llama(layers: int, width: int, seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=layers,
                num_attention_heads=2,
                num_key_value_heads=2,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )

    return tok, llama(4, 48, 1), llama(3, 32, 2)


def _chat_ds():
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, TEXTS, strict=True)
        ]
    )


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

    tok, teacher, student = _tiny_llama_pair()
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    steps = 4
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(**_common(tmp_path, steps), lmbda=lmbda, max_new_tokens=12, max_length=64),
        processing_class=tok,
        train_dataset=_chat_ds(),
        mta_loss=mta_loss,
        on_policy_phrases=None,  # words only on sampled text (no spaCy)
    )
    trainer.train()
    _check(trainer, ("on_policy",) if lmbda == 1.0 else ("on_policy", "off_policy"), steps)


def test_gkd_seq_kd(trl_ready, tmp_path):
    from trl.experimental.gkd import GKDConfig

    from mta_ext.integrations.trl import MTAGKDTrainer

    tok, teacher, student = _tiny_llama_pair()
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(
            **_common(tmp_path, 2), lmbda=0.0, seq_kd=True, max_new_tokens=12, max_length=64
        ),
        processing_class=tok,
        train_dataset=_chat_ds(),
        mta_loss=mta_ext.MTALoss.from_configs(student.config, teacher.config),
        on_policy_phrases=None,
    )
    trainer.train()
    _check(trainer, ("seq_kd",), 2)


@pytest.mark.parametrize("lmbda", [1.0, 0.5])
def test_gold_on_policy(trl_ready, tmp_path, lmbda):
    from datasets import Dataset
    from trl.experimental.gold import GOLDConfig

    from mta_ext.integrations.trl import MTAGOLDTrainer

    teacher, _, student0, s_tok = tiny_models()
    student = copy.deepcopy(student0)
    ds = Dataset.from_list(
        [
            {"prompt": f"Question: {q}\nAnswer:", "completion": " " + a}
            for q, a in zip(QUESTIONS, TEXTS, strict=True)
        ]
    )
    steps = 4
    trainer = MTAGOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=GOLDConfig(
            **_common(tmp_path, steps),
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

    tok, teacher, student = _tiny_llama_pair()
    tok.padding_side = "left"
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    p_before = {k: v.clone() for k, v in mta_loss.state_dict().items()}
    trainer = MTATRLDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**_common(tmp_path, 3), max_completion_length=12),
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

    tok, teacher, student = _tiny_llama_pair()
    loss = mta_ext.MTALoss.from_configs(student.config, teacher.config, weighting="entropy")
    with pytest.raises(ValueError, match="teacher's logits"):
        MTATRLDistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=DistillationConfig(**_common(tmp_path, 1), max_completion_length=4),
            processing_class=tok,
            mta_loss=loss,
        )
