"""Moved to :mod:`marginface.triplet` (the triplet loss and its head); kept for one release."""

from marginface.triplet import DISTANCES, MININGS, TripletHead, TripletLoss, gather_batch, pairwise_distances

__all__ = ["DISTANCES", "MININGS", "TripletHead", "TripletLoss", "gather_batch", "pairwise_distances"]
