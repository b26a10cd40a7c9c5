"""Pure-PyTorch / pure-Python twins of every mta_ext op: the test oracle and benchmark baseline.

Written for clarity straight from docs/DESIGN.md, not for speed.
"""

from .alignment import align_reference
from .losses import structural_loss, structural_loss_original
from .relational import relational_loss, unit_weights
from .salience import entropy_weights, token_salience, uniform_weights
from .segment_pool import segment_pool

__all__ = [
    "align_reference",
    "entropy_weights",
    "relational_loss",
    "segment_pool",
    "structural_loss",
    "structural_loss_original",
    "token_salience",
    "uniform_weights",
    "unit_weights",
]
