#!/usr/bin/env bash
# clang-format over the C++/CUDA sources of csrc/ (style: .clang-format at the repository root).
# Usage: tools/clang_format.sh          reformat in place
#        tools/clang_format.sh --check  list the files that differ, exit 1 if any (CI)
# clang-format comes from PyPI (`pip install "clang-format>=23,<24"`, in the dev extra): one
# major version for everyone, as the output differs between majors.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')
if [[ "${1:-}" == --check ]]; then
  clang-format --style=file --dry-run --Werror "${files[@]}"
else
  clang-format --style=file -i "${files[@]}"
fi
