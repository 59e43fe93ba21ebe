"""Moved to :mod:`marginface.models.card`; kept for one release."""

from marginface.models.card import (  # noqa: F401 (re-exports)
    CARD_KEY,
    CARD_VERSION,
    EMBEDDING_SIZE_RANGE,
    INPUT_SIZE_RANGE,
    PRECISIONS,
    InputContract,
    ModelCard,
    arrays_sha256,
    backbone_tensors,
    card_from_run_config,
    tensors_sha256,
    training_card,
)
