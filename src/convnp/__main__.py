"""``python -m convnp`` runs the command line."""

import sys

from convnp.cli import main

sys.exit(main())
