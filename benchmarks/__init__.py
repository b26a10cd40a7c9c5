"""mta_ext benchmarks: every kernel against the pure-PyTorch reference, in the same run.

Run from the repository root (``python -m benchmarks ...``). If this checkout's ``mta_ext/``
was not built in place (``tools/dev_build.sh``), the installed package is benchmarked instead
of the unbuilt source directory that the working directory would otherwise shadow it with.
The ``--quick`` runs build their tiny models with the tests' fixtures (``tiny_fixtures``).
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if not (_ROOT / "mta_ext" / "_build_info.py").exists():
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
# The tests' tiny models and tokenizers (python_tests/tiny_fixtures.py) for the --quick runs,
# importable as top-level modules; last on the path, so they shadow nothing.
if str(_ROOT / "python_tests") not in sys.path:
    sys.path.append(str(_ROOT / "python_tests"))
