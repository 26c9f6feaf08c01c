"""matplotlib (an optional extra) on the Agg backend, and atomic figure saving: shared by the monitor's and
the benchmark's charts."""

from __future__ import annotations

from typing import Any

from .io import atomic_write


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: str) -> None:
    """Save a matplotlib figure as PNG to ``path`` atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
