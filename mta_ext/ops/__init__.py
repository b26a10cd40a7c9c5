"""Thin Python wrappers over the dispatcher ops ``torch.ops.mta_ext.*``.

Each module registers its op's fake kernel (for torch.compile / meta tensors) and its autograd
formula next to a typed, documented public function.
"""

from .segment_pool import segment_pool

__all__ = ["segment_pool"]
