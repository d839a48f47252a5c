"""``python -m tlcm_train`` (also ``accelerate launch -m tlcm_train``)."""
import sys

from .cli import main

sys.exit(main())
