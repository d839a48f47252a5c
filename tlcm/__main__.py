"""``python -m tlcm`` = the ``tlcm`` command."""
import sys

from tlcm.cli import main

sys.exit(main())
