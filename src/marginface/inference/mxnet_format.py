"""Moved to :mod:`marginface.models.mxnet_format`; kept for one release."""

from marginface.models.mxnet_format import (  # noqa: F401 (re-exports)
    OPERATORS,
    MxnetFormatError,
    MxnetGraph,
    Symbol,
    load_mxnet,
    mobilefacenet_from_graph,
    mxnet_files,
    parse_symbol,
    read_ndarray_file,
    read_symbol,
    write_ndarray_file,
)
