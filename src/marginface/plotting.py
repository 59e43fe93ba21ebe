"""The one way marginface gets matplotlib: the Agg backend (files only, never a window), imported when drawn."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; ImportError naming the extra to install when matplotlib is absent."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'marginface[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
