"""Moved to :mod:`marginface.triplet.head`; kept for one release."""

from marginface.triplet.head import TripletHead, gather_batch  # noqa: F401
