"""Pure-PyTorch / pure-Python twins of every mta_ext op: the test oracle and benchmark baseline.

Written for clarity straight from DESIGN.md, not for speed.
"""

from .alignment import align_reference
from .segment_pool import segment_pool

__all__ = ["align_reference", "segment_pool"]
