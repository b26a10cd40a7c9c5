"""Pure-PyTorch / pure-Python twins of every mta_ext op and loss (the tests' oracle)."""

from .losses import structural_loss, structural_loss_original  # noqa: F401
from .relational import relational_loss, unit_weights  # noqa: F401
from .salience import entropy_weights, token_salience, uniform_weights  # noqa: F401
