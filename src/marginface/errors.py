"""User-facing errors: what the command line prints in one or two lines instead of a traceback.

Library code raises :class:`UserError` (or ``ValueError`` / ``FileNotFoundError``, which the CLI treats the same
way) with a message that says *what* is wrong, *where* (the file, config field or argument) and *the fix*, in
library terms: a function argument between single backquotes (`center_crop`, `images=DIR`), never as a
command-line flag. ``marginface.cli.main`` catches them, puts the command's own option in place of each argument it
has (``--center-crop``, ``--images DIR``), prints ``marginface <command>: <message>`` to stderr and exits with 2;
``marginface --debug <command>`` shows the traceback instead.
"""

from __future__ import annotations

import pickle

# Errors a user can fix: printed as one or two lines, exit code 2 (argparse's own code for usage errors).
# FloatingPointError: training diverged (the trainer's message names the step and the remedy). OSError: a full
# disk, an unreadable file (FileNotFoundError, PermissionError... are OSErrors). UnpicklingError: a refused .bin.
# MemoryError: an input asking for more memory than there is. SafetensorError (matched by name: not imported
# here): safetensors' own errors, e.g. a full disk while writing a checkpoint.
_USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError, pickle.UnpicklingError, MemoryError)
_USER_ERROR_NAMES = ("SafetensorError",)


class UserError(ValueError):
    """A mistake the user can fix (bad input, wrong option, missing file). Subclasses ValueError so that callers
    which already catch ValueError keep working."""


class NoFaceError(UserError):
    """No face was found in an input image; the message names the input."""


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is reported as a one-line message with exit status 2 (by ``marginface`` and by the study's
    child processes) rather than a traceback: see the classes above."""
    return isinstance(err, _USER_ERRORS) or type(err).__name__ in _USER_ERROR_NAMES
