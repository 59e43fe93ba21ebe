"""Moved to :mod:`marginface.experiments.search_figure`; this path is kept for one release."""

from marginface.experiments.search_figure import plot_search  # noqa: F401
