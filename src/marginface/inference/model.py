"""Moved to :mod:`marginface.models` (``load``, ``loaded``, ``onnx_format``, ``pth_format``, ``backbone``); kept for
one release."""

from marginface.models.backbone import EvalInputAdapter  # noqa: F401 (re-exports)
from marginface.models.load import (  # noqa: F401
    MXNET_GRAPH,
    MXNET_SYMBOL_KEY,
    convert_model,
    load_model,
    read_card,
    write_card,
)
from marginface.models.loaded import LoadedModel  # noqa: F401
from marginface.models.onnx_format import (  # noqa: F401
    ONNX_HASH_KEY,
    OnnxRunner,
    insightface_onnx_contract,
    onnx_input_affine,
    onnx_weights_sha256,
    set_onnx_metadata,
)
