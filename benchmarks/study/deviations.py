"""Size of this library's deliberate deviations from the authors' loss (docs/DESIGN.md §6).

    python -m benchmarks.study.deviations [--seed 0]

On one shared tokenizer (random-init Llama teacher 4 layers x 128 wide, student 2 x 64, vocab
512, B=8, T=64 with ragged right padding, ~40% of the tokens in word units of 1-3 tokens,
phrases of 2-4 words; schedule (2,1,word), (3,2,phrase), (4,2,phrase)), float64:

* pads vote: ``reference.structural_loss_original`` (pads vote) vs ``pads_vote=False`` (this
  library's salience), for salience and entropy weighting: relative loss difference and the
  cosine between the student-gradient vectors;
* Hid level: ``hid="unit"`` vs ``hid="token"`` in ``mta_ext.structural_loss``: relative
  difference of the Hid terms and the cosine between the projector gradients.

Prints one JSON line per measurement. Random-init models: the sizes show the order of
magnitude, not what a trained pair gives.
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import torch
from torch import nn

import mta_ext
from mta_ext import reference


def _layout(mask: torch.Tensor, gen: torch.Generator) -> dict[str, SimpleNamespace]:
    B, T = mask.shape
    w_cu, w_r, p_cu, p_r = [0], [], [0], []
    for b in range(B):
        n = int(mask[b].sum())
        pos, ex = 0, []
        while True:
            ln = int(torch.randint(1, 4, (1,), generator=gen))
            pos += int(torch.randint(0, 4, (1,), generator=gen))
            if pos + ln > n:
                break
            ex.append((b * T + pos, b * T + pos + ln))
            pos += ln
        w_r += ex
        w_cu.append(len(w_r))
        i = 0
        while i + 1 < len(ex):
            k = int(torch.randint(2, 5, (1,), generator=gen))
            grp = ex[i : i + k]
            p_r.append((grp[0][0], grp[-1][1]))
            i += k + 1
        p_cu.append(len(p_r))

    def lay(cu, r):
        r = torch.tensor(r, dtype=torch.long).reshape(-1, 2)
        return SimpleNamespace(cu_units=torch.tensor(cu), teacher_ranges=r, student_ranges=r)

    return {"word": lay(w_cu, w_r), "phrase": lay(p_cu, p_r)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from tiny_fixtures import tiny_llama

    torch.manual_seed(args.seed)

    def llama(layers, width):
        return tiny_llama(
            512, layers=layers, width=width, heads=4, kv_heads=2, max_position_embeddings=128
        ).eval()

    teacher, student = llama(4, 128), llama(2, 64)
    gen = torch.Generator().manual_seed(args.seed)
    B, T = 8, 64
    lengths = torch.randint(40, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(0, 512, (B, T), generator=gen)
    al = SimpleNamespace(
        units=_layout(mask, gen),
        teacher={"attention_mask": mask},
        student={"attention_mask": mask},
        shared_tokenizer=True,
    )
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    t_hs = tuple(h.double() for h in t_out.hidden_states)
    logits = t_out.logits.double()
    sched = mta_ext.LayerSchedule([(2, 1, "word"), (3, 2, "phrase"), (4, 2, "phrase")])
    torch.manual_seed(args.seed)
    projs = nn.ModuleList(nn.Linear(64, 128) for _ in range(3)).double()
    out = []

    def leaf():
        return tuple(h.double().requires_grad_() for h in s_out.hidden_states)

    for weighting in ("salience", "entropy"):
        res = {}
        for pads_vote in (True, False):
            s_hs = leaf()
            loss = reference.structural_loss_original(
                s_hs,
                t_hs,
                al,
                sched,
                projectors=projs,
                weighting=weighting,
                teacher_logits=logits,
                pads_vote=pads_vote,
            )
            res[pads_vote] = (
                loss.item(),
                torch.cat([g.flatten() for g in torch.autograd.grad(loss, s_hs[1:])]),
            )
        row = {
            "deviation": "pads do not vote in the salience",
            "weighting": weighting,
            "rel_loss_diff": abs(res[True][0] - res[False][0]) / abs(res[True][0]),
            "student_grad_cosine": _cos(res[True][1], res[False][1]),
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    for weighting in ("salience", "entropy"):
        res = {}
        for hid in ("token", "unit"):
            projs.zero_grad()
            loss, comps = mta_ext.structural_loss(
                leaf(),
                t_hs,
                al,
                sched,
                projectors=projs,
                weighting=weighting,
                teacher_logits=logits,
                hid=hid,
                return_components=True,
            )
            h = sum(comps[f"hid/{i}"] for i in range(3)) / 3
            loss.backward()
            res[hid] = (float(h), torch.cat([p.grad.flatten() for p in projs.parameters()]))
        row = {
            "deviation": "unit-level Hid instead of token-level (one tokenizer)",
            "weighting": weighting,
            "rel_hid_diff": abs(res["unit"][0] - res["token"][0]) / abs(res["token"][0]),
            "projector_grad_cosine": _cos(res["unit"][1], res["token"][1]),
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    main()
