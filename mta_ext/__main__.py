"""``python -m mta_ext demo`` == ``mta-ext demo``."""

import sys

from .cli import main

sys.exit(main())
