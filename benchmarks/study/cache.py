"""One teacher pass, cached on disk, for every arm and seed of benchmarks.study.quality.

The teacher is frozen, so its hidden states at the scheduled layers depend only on the text and
its tokenization. :func:`build_teacher_cache` runs it once over a list of passages (tokenized
exactly as ``MTACollator`` tokenizes the teacher side, so cached and collated token ids can be
checked against each other) and stores, per passage, the token ids and the hidden states of the
requested layers; optionally the sorted top-k next-token probabilities per token (what a ULD
logit-KD term needs). :class:`TeacherCache` turns cached passages back into the padded
``[B, T_t, D_t]`` tensors of a collated batch.

Layout on disk (``torch.save`` of one dict): ``ids`` int64 ``[ΣT]``, ``cu`` int64 ``[N+1]``
(passage ``i`` owns rows ``cu[i]:cu[i+1]``), ``hidden`` ``[L, ΣT, D_t]`` in the cache dtype,
``layers`` (the teacher ``hidden_states`` indices), optional ``topk`` fp32 ``[ΣT, k]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["TeacherCache", "build_teacher_cache", "cache_key"]


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (texts included)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_teacher_cache(
    path: Path,
    teacher: torch.nn.Module,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    examples: Sequence[dict[str, Any]],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    top_k: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> None:
    """Run ``teacher`` over ``examples`` (collated by ``collate``) and save the cache at ``path``.

    Args:
        teacher: the frozen HF teacher.
        collate: an ``MTACollator`` (its ``teacher_input_ids`` / mask are what is run).
        examples: ``{"text", ["spans"]}`` dicts, in cache order.
        layers: teacher ``hidden_states`` indices to keep (0 = embeddings).
        dtype: storage dtype of the hidden states (fp32 keeps them exact; Gemma-3's residual
            stream reaches ~1e5, so fp16 would overflow: use bf16 to halve the size).
        top_k: also store the sorted top-k next-token probabilities per token (needs the
            teacher's LM head: for Gemma-3, a 262k-wide matmul per token).
    """
    from mta_ext.integrations import teacher_forward
    from mta_ext.logit_kd import sorted_top_probs

    teacher.eval()
    ids_parts: list[torch.Tensor] = []
    hid_parts: list[list[torch.Tensor]] = [[] for _ in layers]
    topk_parts: list[torch.Tensor] = []
    lengths: list[int] = []
    n = len(examples)
    for start in range(0, n, batch_size):
        batch = collate(list(examples[start : start + batch_size]))
        ids = batch["teacher_input_ids"]
        mask = batch["teacher_attention_mask"]
        out = teacher_forward(
            teacher, ids.to(device), mask.to(device), need_logits=top_k is not None
        )
        valid = mask.bool()
        for b in range(ids.shape[0]):
            row = valid[b]
            ids_parts.append(ids[b][row])
            lengths.append(int(row.sum()))
            for j, layer in enumerate(layers):
                hid_parts[j].append(out.hidden_states[layer][b][row.to(device)].to("cpu", dtype))
            if top_k is not None:
                # the live ULD's teacher side, value for value (teacher_forward ran in no_grad)
                p = sorted_top_probs(out.logits[b][row.to(device)], top_k=top_k)
                topk_parts.append(p.to("cpu", torch.float32))
        del out
        done = min(start + batch_size, n)
        if done == n or (start // batch_size) % 10 == 0:
            log(f"  teacher cache: {done}/{n} passages")
    cu = torch.zeros(n + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    payload: dict[str, Any] = {
        "ids": torch.cat(ids_parts),
        "cu": cu,
        "hidden": torch.stack([torch.cat(h) for h in hid_parts]),
        "layers": list(layers),
    }
    if top_k is not None:
        payload["topk"] = torch.cat(topk_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class TeacherCache:
    """Cached teacher passages -> padded batch tensors.

    Args:
        path: a file written by :func:`build_teacher_cache`.
        device: where :meth:`batch` puts its tensors.
    """

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        data = torch.load(path, map_location="cpu", weights_only=True)
        self.ids: torch.Tensor = data["ids"]
        self.cu: torch.Tensor = data["cu"]
        self.hidden: torch.Tensor = data["hidden"]
        self.layers: list[int] = list(data["layers"])
        self.topk: torch.Tensor | None = data.get("topk")
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.cu.numel() - 1

    def batch(
        self, indices: Sequence[int], teacher_input_ids: torch.Tensor, teacher_mask: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """Hidden states of passages ``indices`` laid out like the collated teacher batch.

        Args:
            indices: cache rows of the batch's examples, in batch order.
            teacher_input_ids, teacher_mask: ``[B, T_t]`` from the collator; every example's
                non-pad ids must equal the cached ids (else ``ValueError``: the tokenization
                changed since the cache was built).

        Returns:
            ``(hidden_states, topk)``: one ``[B, T_t, D_t]`` float32 tensor per cached layer
            (zeros at pads), and ``[B, T_t, k]`` top-k probabilities or ``None``.
        """
        B, T = teacher_input_ids.shape
        L, _, D = self.hidden.shape
        hs = torch.zeros(L, B, T, D, dtype=torch.float32)
        topk = None if self.topk is None else torch.zeros(B, T, self.topk.shape[1])
        valid = teacher_mask.bool()
        for b, i in enumerate(indices):
            a, e = int(self.cu[i]), int(self.cu[i + 1])
            pos = valid[b].nonzero().squeeze(1)
            got = teacher_input_ids[b][pos]
            if got.numel() != e - a or not torch.equal(got, self.ids[a:e]):
                raise ValueError(
                    f"teacher cache: passage {i} (batch example {b}) is tokenized differently "
                    "from the cached copy; delete the cache (or pass --fresh) and rerun"
                )
            hs[:, b, pos] = self.hidden[:, a:e].float()
            if topk is not None:
                assert self.topk is not None
                topk[b, pos] = self.topk[a:e]
        hidden = tuple(h.to(self.device, non_blocking=True) for h in hs.unbind(0))
        return hidden, None if topk is None else topk.to(self.device)
