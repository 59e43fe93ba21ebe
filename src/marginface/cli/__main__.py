"""``python -m marginface.cli ...`` (what ``torchrun -m marginface.cli`` and the study runner start): the
``marginface`` console script."""

import sys

from marginface.cli import main

sys.exit(main())
