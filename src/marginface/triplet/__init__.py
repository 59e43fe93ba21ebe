"""The triplet loss with in-batch mining (:mod:`~marginface.triplet.loss`) and the head that puts it in the trainer
(:mod:`~marginface.triplet.head`), formerly ``marginface.metric`` (a name too close to ``evaluation.metrics``).

Kept apart from :mod:`marginface.losses` because those losses own class centres and have an element-wise margin
(DESIGN.md's loss contract); a triplet loss owns nothing and is a function of the whole batch.
"""

from marginface.triplet.head import TripletHead, gather_batch
from marginface.triplet.loss import DISTANCES, MININGS, TripletLoss, pairwise_distances

__all__ = ["DISTANCES", "MININGS", "TripletHead", "TripletLoss", "gather_batch", "pairwise_distances"]
