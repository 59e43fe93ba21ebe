"""User-facing errors: what the command line prints in one or two lines instead of a traceback.

Library code raises :class:`UserError` (or ``ValueError`` / ``FileNotFoundError``, which the CLI treats the same
way) with a message that says *what* is wrong, *where* (the file, config field or argument) and *the fix*, in
library terms: a function argument between single backquotes (`center_crop`, `images=DIR`), never as a
command-line flag. ``marginface.cli.main`` catches them, puts the command's own option in place of each argument it
has (``--center-crop``, ``--images DIR``), prints ``marginface <command>: <message>`` to stderr and exits with 2;
``marginface --debug <command>`` shows the traceback instead.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix (bad input, wrong option, missing file). Subclasses ValueError so that callers
    which already catch ValueError keep working."""


class NoFaceError(UserError):
    """No face was found in an input image; the message names the input."""
