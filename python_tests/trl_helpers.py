"""Shared pieces of the TRL tests (test_trl.py: off-policy, test_trl_onpolicy.py: on-policy):
the version gate, the trainer settings, the one-tokenizer tiny pair and the datasets."""

from __future__ import annotations

import os

import torch
from _integ_models import TEXTS, require, require_mta_api
from tiny_fixtures import tiny_llama, tiny_tokenizer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the experimental-API notice

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


def require_trl() -> None:
    """Skip without the packages the TRL tests need; fail on a trl outside the tested range."""
    require_mta_api()
    require("trl", "datasets", "spacy", "accelerate")
    from mta_ext.integrations.trl import check_trl_version

    check_trl_version()


def trainer_args(tmp_path, steps: int, **extra) -> dict:
    """The TRL config fields every test shares: ``steps`` optimizer steps of 2 rows on the CPU,
    logged every step, nothing saved; ``extra`` adds the trainer-specific ones."""
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
        **extra,
    )


def shared_tokenizer_pair():
    """``(tokenizer, teacher, student)``: one small byte-level BPE (trained in < 1 s, ChatML
    template) for both models, a 4-layer width-48 Llama teacher (seed 1) and a 3-layer
    width-32 student (seed 2); the 151k-vocab tokenizer of ``tiny_models`` would make GKD's
    JSD dominate. Seeds the global RNG (the student's seed is the last)."""
    tok = tiny_tokenizer("bpe", texts=TEXTS * 3 + QUESTIONS * 3, vocab_size=400)
    tok.chat_template = CHATML

    def llama(layers: int, width: int, seed: int) -> torch.nn.Module:
        return tiny_llama(
            len(tok),
            layers=layers,
            width=width,
            seed=seed,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )

    return tok, llama(4, 48, 1), llama(3, 32, 2)


def chat_dataset():
    """``QUESTIONS`` answered by ``TEXTS`` as chat messages (GKD)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, TEXTS, strict=True)
        ]
    )


def completion_dataset():
    """``QUESTIONS`` answered by ``TEXTS`` as prompt / completion text (GOLD)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": f"Question: {q}\nAnswer:", "completion": " " + a}
            for q, a in zip(QUESTIONS, TEXTS, strict=True)
        ]
    )
