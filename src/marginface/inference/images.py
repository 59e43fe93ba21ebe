"""Moved to :mod:`marginface.data.images` (align/ checks pixels through it too); kept for one release.

This name is the same module object, not a copy of its names: ``MAX_IMAGE_PIXELS`` is a limit users may set, and
its error messages name ``marginface.inference.images.MAX_IMAGE_PIXELS``; setting it here must change the check.
"""

import sys

from marginface.data import images

sys.modules[__name__] = images
