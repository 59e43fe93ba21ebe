"""Moved to :mod:`marginface.triplet.loss`; kept for one release."""

from marginface.triplet.loss import (  # noqa: F401
    DISTANCES,
    EPS,
    FALLBACKS,
    MININGS,
    TripletLoss,
    batch_all,
    batch_hard,
    pairwise_distances,
    semi_hard,
)
