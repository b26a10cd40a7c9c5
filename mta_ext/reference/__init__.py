"""Pure-PyTorch / pure-Python twins of every mta_ext op: the test oracle and benchmark baseline.

Written for clarity straight from docs/DESIGN.md, not for speed.
"""

from .alignment import align_reference
from .logit_kd import boundary_pairs_reference, shared_vocab_kl_reference, uld_reference
from .losses import structural_loss, structural_loss_original
from .relational_loss import relational_loss, unit_weights
from .row_cosine import row_cosine
from .segment_pool import segment_pool
from .token_salience import entropy_weights, token_salience, uniform_weights

__all__ = [
    "align_reference",
    "boundary_pairs_reference",
    "entropy_weights",
    "relational_loss",
    "row_cosine",
    "segment_pool",
    "shared_vocab_kl_reference",
    "structural_loss",
    "structural_loss_original",
    "token_salience",
    "uld_reference",
    "uniform_weights",
    "unit_weights",
]
