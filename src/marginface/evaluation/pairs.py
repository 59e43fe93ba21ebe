"""Moved to :mod:`marginface.data.pairs` (pairs.txt parsing is data: align/ reads it too); kept for one release."""

from marginface.data.pairs import PairsFile, image_name, read_pairs, resolve_images  # noqa: F401
