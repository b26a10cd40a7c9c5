"""Print what CMake needs to know about the torch in this interpreter, as `KEY=VALUE` lines."""

import os

import torch

root = os.path.dirname(torch.__file__)
print(f"TORCH_VERSION={torch.__version__}")
print(f"TORCH_ROOT={root}")
print(f"TORCH_CUDA_VERSION={torch.version.cuda or ''}")
print(f"TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
