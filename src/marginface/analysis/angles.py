"""Angle statistics of a run for the figures: the per-step theta histograms its log holds.

The angle computations themselves (and the recorder the trainer registers for ``analysis.theta_every``) moved to
:mod:`marginface.losses.angles`, below training, which records them; their names are re-exported here for one
release.
"""

from __future__ import annotations

import numpy as np

# moved to marginface.losses.angles; kept for one release
from marginface.losses.angles import (  # noqa: F401
    CLASS_BLOCK,
    HIST_BINS,
    HIST_RANGE,
    QUANTILES,
    ThetaRecorder,
    angle_histogram,
    angle_statistics,
    bin_edges,
    class_cosines,
    embedding_angles,
)


def histogram_from_log(series: dict[str, list[tuple[int, float]]], name: str = "theta_y") -> dict[int, np.ndarray]:
    """{step: (HIST_BINS,) counts} from a run's log (``trainer.read_log``) for ``theta_y`` or ``theta_nn``."""
    per_step: dict[int, np.ndarray] = {}
    for i in range(HIST_BINS):
        for step, value in series.get(f"{name}_hist_{i:02d}", []):
            per_step.setdefault(step, np.zeros(HIST_BINS))[i] = value
    return dict(sorted(per_step.items()))
