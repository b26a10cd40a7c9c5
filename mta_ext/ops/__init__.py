"""Thin Python wrappers over the dispatcher ops ``torch.ops.mta_ext.*``.

Each module registers its op's fake kernel (for torch.compile / meta tensors) and its autograd
formula next to a typed, documented public function.
"""

from .relational_loss import relational_loss
from .row_cosine import row_cosine
from .segment_pool import segment_pool
from .token_salience import token_salience

__all__ = ["relational_loss", "row_cosine", "segment_pool", "token_salience"]
