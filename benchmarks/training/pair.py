"""The setup and the results file that the training-step benchmarks share (``bench_step``,
``bench_onpolicy``).

A teacher / student pair on the device (the demo pair, or with ``--quick`` two tiny random
models with different byte-level BPE tokenizers trained on the bundled corpus), ``MTALoss``
with the uniform layer schedule of the two depths, and one AdamW over the student and the
loss's projectors. Seeded (``torch.manual_seed(0)``) before the models are built.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from typing import Any

import torch

from benchmarks.common import machine_info, write_results


@dataclasses.dataclass
class Pair:
    """The models, tokenizers, loss and optimizer of one training-step benchmark."""

    teacher: torch.nn.Module  # frozen, eval mode, on ``device``
    t_tok: Any
    student: torch.nn.Module  # train mode, on ``device``
    s_tok: Any
    mta: Any  # mta_ext.MTALoss (its ``schedule``: the uniform schedule of the two depths)
    opt: torch.optim.Optimizer  # AdamW over the student's and the loss's parameters
    device: torch.device


def add_pair_args(p: argparse.ArgumentParser) -> None:
    """The flags every training-step benchmark takes: --quick, --device, --teacher, --student."""
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", default="demo-student")


def load_models(args: argparse.Namespace, tmp: str) -> tuple[Any, Any, Any, Any]:
    """(teacher, teacher tokenizer, student, student tokenizer); with ``args.quick`` builds the
    tiny pair in ``tmp`` and points ``args.teacher`` / ``args.student`` at it."""
    from tiny_fixtures import bpe_pair

    from mta_ext.models import load_model_and_tokenizer

    if args.quick:
        from mta_ext.data import load_texts

        t_dir, s_dir = bpe_pair(tmp, load_texts()[:200])
        args.teacher, args.student = str(t_dir), str(s_dir)
    teacher, t_tok = load_model_and_tokenizer(args.teacher, log=lambda m: print(m, flush=True))
    student, s_tok = load_model_and_tokenizer(args.student, log=lambda m: print(m, flush=True))
    return teacher, t_tok, student, s_tok


def setup_pair(args: argparse.Namespace, *, lr: float) -> Pair:
    """Seed, load the pair (``load_models``), place it on ``args.device``, build ``MTALoss``
    (``MTALoss.from_configs``: the uniform schedule) and AdamW with learning rate ``lr``."""
    import mta_ext

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        teacher, t_tok, student, s_tok = load_models(args, tmp)
    dev = torch.device(args.device)
    teacher.to(dev).eval().requires_grad_(False)
    student.to(dev).train()
    mta = mta_ext.MTALoss.from_configs(student.config, teacher.config).to(dev)
    opt = torch.optim.AdamW(list(student.parameters()) + list(mta.parameters()), lr=lr)
    return Pair(teacher, t_tok, student, s_tok, mta, opt, dev)


def write_run(
    kind: str, args: argparse.Namespace, info: dict, rows: list[dict], table: str
) -> dict:
    """Print the table and the setup, write ``benchmarks/results/<kind>_<device>[_quick].json``
    (machine, setup, rows, the table with the setup under it) and return that payload."""
    print(table)
    print(info)
    payload = {
        "machine": machine_info(args.device),
        "setup": info,
        "rows": rows,
        "table": table + f"\n{info}\n",
    }
    name = f"{kind}_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload
