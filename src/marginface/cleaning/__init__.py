"""Data cleaning as in the ArcFace paper: centroid outliers, duplicate identities, train/test identity overlap.

Works on any embedder's output: ``(N, D)`` embeddings with one identity per row (the folder part of each image's
name). :mod:`~marginface.cleaning.centroids` holds the numerics, :mod:`~marginface.data.lists` the plain
files that ``marginface train`` (``data.exclude_identities``, ``data.image_list``) and ``prepare rec`` read.
"""
