"""FSDP2 (``torch.distributed.fsdp.fully_shard``, 2 CPU processes, gloo): training with MTALoss
matches one process on the same data.

The student's decoder layers, the student (root) and the MTALoss (its Hid projectors, called
outside ``student.forward``, so a unit of their own) are sharded. As for DDP
(``test_ddp.py``), each rank's loss is the mean over its own micro-batch and FSDP averages the
gradients (reduce-scatter), so two FSDP steps on shards S0, S1 must equal two single-process
steps on ``(L(S0) + L(S1)) / 2``: we compare the unsharded gradients of the first step and the
unsharded parameters after the second AdamW step, for every student parameter and projector.
"""

from __future__ import annotations

import os

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models, tiny_pair
from test_ddp import PER_RANK, WORLD, _free_port, _init_gloo, _models, _plain

STEPS = 2
LR = 1e-3


def _optimizer(params):
    # foreach=False: the same per-parameter arithmetic on sharded (DTensor) and plain params
    return torch.optim.AdamW(params, lr=LR, foreach=False)


def _fsdp_rank(rank: int, port: int, t_dir, s_dir, shards_path, out_path=None) -> None:
    """One FSDP2 rank: STEPS AdamW steps on its shard; rank 0 saves full grads and params."""

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from mta_ext.integrations import distillation_loss

    _init_gloo(rank, port)
    try:
        teacher, student, mta_loss = _models(t_dir, s_dir)
        fully_shard(mta_loss)  # the projectors: their own unit, gathered on mta_loss(...)
        for layer in student.model.layers:
            fully_shard(layer)
        fully_shard(student)  # root: embeddings, norm, (tied) LM head
        assert all(type(p).__name__ == "DTensor" for p in student.parameters())
        opt = _optimizer(student.parameters())
        shard = torch.load(shards_path, weights_only=False)[rank]
        grads = None
        for step in range(STEPS):
            loss, _, _ = distillation_loss(student, teacher, shard, mta_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:  # full_tensor() is a collective: every rank calls it
                grads = {n: p.grad.full_tensor() for n, p in student.named_parameters()}
            opt.step()
        params = {n: p.full_tensor() for n, p in student.named_parameters()}
        if out_path is not None:
            torch.save({"grads": grads, "params": params}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor")
def test_fsdp2_training_matches_single_process(tmp_path):
    require_mta_api()
    require("spacy")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    import mta_ext
    from mta_ext.integrations import MTACollator, distillation_loss

    t_dir, s_dir = tiny_pair()
    _, t_tok, _, s_tok = tiny_models()
    collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=24)
    texts = TEXTS[: WORLD * PER_RANK]
    shards = [_plain(collator(texts[r * PER_RANK : (r + 1) * PER_RANK])) for r in range(WORLD)]
    shards_path, out_path = tmp_path / "shards.pt", tmp_path / "fsdp.pt"
    torch.save(shards, shards_path)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    port = _free_port()
    worker = mp.get_context("spawn").Process(
        target=_fsdp_rank, args=(1, port, t_dir, s_dir, shards_path), daemon=True
    )
    worker.start()
    threads = torch.get_num_threads()
    try:
        _fsdp_rank(0, port, t_dir, s_dir, shards_path, out_path)
        worker.join(timeout=90)
    finally:
        torch.set_num_threads(threads)
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == 0, f"FSDP rank 1 failed (exit code {worker.exitcode})"
    got = torch.load(out_path)

    torch.set_num_threads(1)
    try:
        teacher, student, mta_loss = _models(t_dir, s_dir)
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        opt = _optimizer(student.parameters())
        for step in range(STEPS):
            losses = [distillation_loss(student, teacher, s, mta_loss)[0] for s in shards]
            opt.zero_grad(set_to_none=True)
            (sum(losses) / WORLD).backward()
            if step == 0:
                ref_grads = {n: p.grad.detach().clone() for n, p in student.named_parameters()}
            opt.step()
        ref_params = {n: p.detach().clone() for n, p in student.named_parameters()}
    finally:
        torch.set_num_threads(threads)

    assert set(got["grads"]) == set(ref_grads)
    assert any(n.startswith("mta_loss.projectors") for n in ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    for name, p in ref_params.items():
        assert not torch.equal(p, before[name]) or ref_grads[name].abs().max() == 0, name
        torch.testing.assert_close(got["params"][name], p, rtol=1e-4, atol=1e-6, msg=name)
