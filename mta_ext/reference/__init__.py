"""Pure-PyTorch / pure-Python twins of every mta_ext op: the test oracle and benchmark baseline.

Written for clarity straight from DESIGN.md, not for speed.
"""

from .alignment import align_reference

__all__ = ["align_reference"]
