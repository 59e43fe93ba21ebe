"""Moved to :mod:`marginface.data.lists` (training reads these lists too); kept for one release."""

from marginface.data.lists import read_lines, read_merge_map, write_lines, write_merge_map  # noqa: F401
