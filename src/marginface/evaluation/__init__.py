"""marginface.evaluation: the field's evaluation protocols (see docs/evaluation.md).

* :mod:`~marginface.evaluation.metrics` — pure numpy functions: k-fold accuracy, ROC, AUC, EER, TAR@FAR, CMC.
* :mod:`~marginface.data.pairs` — LFW ``pairs.txt`` with its folds (moved to data/, read by align/ too).
* :mod:`~marginface.evaluation.embed` — batched extraction with flip TTA and image loading (model files are
  read by :mod:`marginface.models`).
* :mod:`~marginface.evaluation.calibration` — a verification threshold at a target FAR from pair scores.
* :mod:`~marginface.evaluation.verification` — ``.bin`` sets, pairs + folder, external embeddings files.
* :mod:`~marginface.evaluation.identification` — gallery + distractors on faiss, MegaFace-style report.

Nothing is imported here, so ``import marginface.evaluation`` stays free of torch/faiss/matplotlib imports.
"""
