"""Metric learning on top of the margin-softmax stack: triplet losses with in-batch mining and their heads.

Kept apart from :mod:`marginface.losses` because those losses own class centres and have an element-wise margin
(DESIGN.md's loss contract); a triplet loss owns nothing and is a function of the whole batch.
"""

from marginface.metric.head import TripletHead, gather_batch
from marginface.metric.triplet import DISTANCES, MININGS, TripletLoss, pairwise_distances

__all__ = ["DISTANCES", "MININGS", "TripletHead", "TripletLoss", "gather_batch", "pairwise_distances"]
