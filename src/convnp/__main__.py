"""``python -m convnp`` runs the command line."""

import sys

from convnp.app.cli import main

sys.exit(main())
