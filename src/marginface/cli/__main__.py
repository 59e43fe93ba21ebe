"""``python -m marginface.cli ...`` (what ``torchrun -m marginface.cli`` and the study runner start): the
``marginface`` console script."""

import sys

from marginface.cli import main

if __name__ == "__main__":  # runpy runs this file as __main__; a tool importing every module must not run a command
    sys.exit(main())
