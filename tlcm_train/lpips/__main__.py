"""``python -m tlcm_train.lpips train|eval ...``"""
import sys

from .cli import main

sys.exit(main())
