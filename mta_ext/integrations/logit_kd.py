"""Deprecated: the logit-KD losses moved to :mod:`mta_ext.logit_kd` (beside ``mta_ext.losses``).

Importing this module re-exports the same objects and warns once (DeprecationWarning).
"""

from __future__ import annotations

import warnings

from ..logit_kd import *  # noqa: F403
from ..logit_kd import __all__  # noqa: F401

warnings.warn(
    "mta_ext.integrations.logit_kd moved to mta_ext.logit_kd; import from there (this module "
    "will be removed)",
    DeprecationWarning,
    stacklevel=2,
)
