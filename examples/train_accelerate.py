"""Cross-tokenizer MTA distillation with HF accelerate: one script for CPU, one GPU or DDP.

    accelerate launch examples/train_accelerate.py                       # 1 process
    accelerate launch --multi_gpu --num_processes 4 examples/train_accelerate.py
    accelerate launch --cpu --num_processes 2 examples/train_accelerate.py --teacher T --student S

How it behaves distributed: each rank collates, aligns and computes the loss of its own
micro-batch (CE mean over its tokens, DSA/Hid normalised by its own units); DDP averages the
gradients, so a step optimises the mean of per-rank losses. Nothing is gathered across ranks.
The MTALoss is attached to the student (``student.mta_loss``) so that DDP/FSDP/DeepSpeed wrap
and synchronise the Hid projectors like any student parameter; the teacher is not prepared
(frozen, run under no_grad on each rank; with FSDP/ZeRO-3 shard it separately if it is big).
"""

import argparse

import torch
from accelerate import Accelerator
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
p.add_argument("--batch-size", type=int, default=4, help="per process")
p.add_argument("--max-length", type=int, default=64)
p.add_argument("--grad-accum", type=int, default=1)
p.add_argument("--out", default="out/accelerate")
args = p.parse_args()

acc = Accelerator(gradient_accumulation_steps=args.grad_accum)
torch.manual_seed(0)  # same projector init on every rank (DDP also broadcasts rank 0's)
with acc.main_process_first():  # the first run converts the demo models once, on rank 0
    teacher, t_tok = load_model_and_tokenizer(args.teacher, log=acc.print)
    student, s_tok = load_model_and_tokenizer(args.student, log=acc.print)
teacher.requires_grad_(False).eval().to(acc.device)
mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
student.add_module("mta_loss", mta_loss)

texts = chunk_texts(load_texts(args.data), max_chars=4 * args.max_length)
n = args.steps * args.batch_size * acc.num_processes * args.grad_accum
dataset = TextDataset(texts[:n], mta_ext.annotate_spans(texts[:n]))
collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=args.max_length)
loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collator)
proj = set(map(id, mta_loss.parameters()))
optimizer = torch.optim.AdamW(
    [
        {"params": [q for q in student.parameters() if id(q) not in proj], "lr": 5e-5},
        {"params": list(mta_loss.parameters()), "lr": 1e-3},
    ]
)
student, optimizer, loader = acc.prepare(student, optimizer, loader)
student.train()

for step, batch in enumerate(loader, 1):
    with acc.accumulate(student):
        loss, parts, _ = distillation_loss(student, teacher, batch, mta_loss)
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    acc.print(
        f"step {step}: "
        + " ".join(f"{k} {float(parts[k]):.4f}" for k in ("loss", "ce", "dsa", "hid"))
    )

acc.wait_for_everyone()
if acc.is_main_process:
    save_student(acc.unwrap_model(student), args.out, tokenizer=s_tok, mta_loss=mta_loss)
    acc.print("saved the student (+ mta_projectors.safetensors) to", args.out)
