"""DDP (2 CPU processes, gloo): one step on a split batch gives the gradients of one process.

Semantics being checked (documented in ``mta_ext/integrations/distill.py``): each rank computes
the loss of its own micro-batch (CE over its tokens; DSA/Hid normalised by its own units'
salience), and DDP averages the gradients. So a DDP step on shards S0, S1 must give exactly the
gradient of ``(L(S0) + L(S1)) / 2`` computed on one process; that is what we compare, for every
student parameter and every Hid projector. It is *not* the gradient of ``L(S0 ∪ S1)``, whose
normalisers span both shards; the test reports that gap instead of hiding it.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models, tiny_pair

WORLD = 2
PER_RANK = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(t_dir, s_dir):
    """Teacher + student with the MTALoss attached (as MTADistillationTrainer does)."""
    import mta_ext
    from mta_ext.models import load_model_and_tokenizer

    teacher, _ = load_model_and_tokenizer(t_dir, log=lambda _: None)
    student, _ = load_model_and_tokenizer(s_dir, log=lambda _: None)
    teacher.requires_grad_(False)
    torch.manual_seed(0)  # same projector init on every process
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    student.add_module("mta_loss", mta_loss)
    student.train()
    return teacher, student, mta_loss


def _plain(batch: dict) -> dict:
    """The collated batch with its alignment as plain dicts of tensors (picklable, no aligner
    needed in the workers; the losses accept this form)."""
    al = batch["alignment"]
    fields = ("cu_units", "teacher_ranges", "student_ranges")
    return {
        **batch,
        "alignment": {
            "teacher": dict(al.teacher),
            "student": dict(al.student),
            "units": {g: {f: getattr(lay, f) for f in fields} for g, lay in al.units.items()},
        },
    }


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _init_gloo(rank: int, port: int) -> None:
    """Join the 2-process gloo group on the loopback (one thread per rank)."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=90),
    )


def _ddp_rank(rank: int, port: int, t_dir, s_dir, shards_path, out_path=None) -> None:
    """One DDP rank: forward/backward on its shard; rank 0 saves the synced gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mta_ext.integrations import distillation_loss

    _init_gloo(rank, port)
    try:
        teacher, student, mta_loss = _models(t_dir, s_dir)
        ddp = DDP(student)
        shard = torch.load(shards_path, weights_only=False)[rank]
        loss, _, _ = distillation_loss(ddp, teacher, shard, mta_loss)
        loss.backward()
        if out_path is not None:
            torch.save(_grads(student), out_path)
    finally:
        dist.destroy_process_group()


def test_ddp_step_matches_single_process(tmp_path):
    require_mta_api()
    require("spacy")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import mta_ext
    from mta_ext.integrations import MTACollator, distillation_loss

    t_dir, s_dir = tiny_pair()
    _, t_tok, _, s_tok = tiny_models()
    collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=24)
    texts = TEXTS[: WORLD * PER_RANK]
    shards = [_plain(collator(texts[r * PER_RANK : (r + 1) * PER_RANK])) for r in range(WORLD)]
    whole = _plain(collator(texts))
    shards_path, out_path = tmp_path / "shards.pt", tmp_path / "ddp_grads.pt"
    torch.save(shards, shards_path)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Rank 1 in a spawned process, rank 0 here (one fresh interpreter instead of two).
    port = _free_port()
    worker = mp.get_context("spawn").Process(
        target=_ddp_rank, args=(1, port, t_dir, s_dir, shards_path), daemon=True
    )
    worker.start()
    threads = torch.get_num_threads()
    try:
        _ddp_rank(0, port, t_dir, s_dir, shards_path, out_path)
        worker.join(timeout=90)
    finally:
        torch.set_num_threads(threads)
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == 0, f"DDP rank 1 failed (exit code {worker.exitcode})"
    ddp_grads = torch.load(out_path)

    torch.set_num_threads(1)  # same kernels as the workers, so sums match closely
    try:
        teacher, student, mta_loss = _models(t_dir, s_dir)
        losses = [distillation_loss(student, teacher, s, mta_loss)[0] for s in shards]
        (sum(losses) / WORLD).backward()
        ref = _grads(student)
        student.zero_grad(set_to_none=True)
        distillation_loss(student, teacher, whole, mta_loss)[0].backward()
        full = _grads(student)
    finally:
        torch.set_num_threads(threads)

    assert set(ddp_grads) == set(ref)
    assert any(n.startswith("mta_loss.projectors") for n in ref)
    for name, g in ref.items():
        torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # the full-batch gradient is a different objective (different normalisers); report the gap
    gap = max(float((full[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-12)) for n in ref)
    print(f"max relative gap DDP-mean vs full-batch gradient: {gap:.3e}")
