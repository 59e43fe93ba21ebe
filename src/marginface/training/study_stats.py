"""Moved to :mod:`marginface.experiments.study_stats` (the app layer); this path is kept for one release."""

# moved to marginface.experiments.study_stats; kept for one release
from marginface.experiments.study_stats import (  # noqa: F401
    Welch,
    bootstrap_interval,
    holm,
    incomplete_beta,
    t_two_sided_p,
    welch,
)
