"""``python -m tlcm_train.app`` = ``tlcm-trainer``."""
import sys

from .launch import main

sys.exit(main())
