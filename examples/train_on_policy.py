"""On-policy cross-tokenizer distillation with MTA in plain PyTorch: the student samples a
completion, the teacher scores it, ``loss = (1 - w)·KD + w·L_MTA``.

    python examples/train_on_policy.py [--teacher DIR] [--student DIR] [--steps 10]

KD is ULD at the token boundaries both tokenizations share (different tokenizers) or the
reverse KL on the sampled tokens (one tokenizer); L_MTA is on the units of the completion text,
aligned on the ids the student really sampled (docs/DESIGN.md, on-policy contract). Each model
gets the prompt in its own chat template. Defaults: Gemma-3-270M -> SmolLM2-135M.
"""

import argparse

import torch

import mta_ext
from mta_ext.data import chunk_texts, load_texts
from mta_ext.models import load_model_and_tokenizer
from mta_ext.onpolicy import on_policy_step, prompt_ids
from mta_ext.phrases import SpanPool


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", default="demo-student")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--mta-share", type=float, default=0.5, help="w in (1 - w)·KD + w·L_MTA")
    p.add_argument("--span-workers", type=int, default=1, help="spaCy worker processes (0: inline)")
    args = p.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    teacher, t_tok = load_model_and_tokenizer(args.teacher)
    student, s_tok = load_model_and_tokenizer(args.student)
    teacher.requires_grad_(False).eval().to(device)
    student.train().to(device)
    aligner = mta_ext.Aligner(t_tok, s_tok)  # spaCy phrases + the words inside them
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config).to(device)
    opt = torch.optim.AdamW(
        [
            {"params": student.parameters(), "lr": 1e-5},
            {"params": mta_loss.parameters(), "lr": 1e-3},
        ]
    )
    # prompts: the first words of the bundled passages ("Continue: ...")
    words = [t.split() for t in chunk_texts(load_texts(), max_chars=300)]
    prompts = ["Continue this text: " + " ".join(w[:12]) for w in words if len(w) > 12]
    eos = [t_tok.eos_token_id] if t_tok.eos_token_id is not None else []

    pool = SpanPool(args.span_workers) if args.span_workers else None  # spaCy off the critical path
    if pool is not None:
        pool.warm_up()  # load spaCy in the worker before the first step
        for step in range(1, args.steps + 1):
            chunk = prompts[(step - 1) * args.batch_size : step * args.batch_size]
            loss, parts, batch = on_policy_step(
                student,
                teacher,
                aligner,
                mta_loss,
                prompt_ids(s_tok, chunk),  # each model sees its own template
                prompt_ids(t_tok, chunk),
                max_new_tokens=args.max_new_tokens,
                mta_share=args.mta_share,
                span_pool=pool,
                teacher_suffix_ids=eos,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*student.parameters(), *mta_loss.parameters()], 1.0)
            opt.step()
            print(
                f"step {step}: loss {parts['loss']:.4f} kd {parts.get('kd', 0):.4f} "
                f"mta {parts.get('mta', 0):.4f} units {parts['units']:.0f} | generate "
                f"{parts['generate_s']:.1f}s align+spans {parts['align_spans_s']:.2f}s"
            )
        print("a sampled completion:", repr(batch.texts[0]))
        if pool is not None:
            pool.close()


if __name__ == "__main__":  # SpanPool spawns worker processes: keep the work in main()
    main()
