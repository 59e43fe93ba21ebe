"""A one-page HTML report of a run: a table of facts and the run's figures, each referenced by a relative path.

Only figures whose files exist are referenced (a missing optional figure is listed as skipped, never a broken
image), so the page opens from the run folder in any browser, offline.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from marginface.files import atomic_write_text

# Figures are shown at their own pixel size (their text was drawn for it: ~10 pt at 100-120 dpi), shrunk only to
# fit the page. The old fixed 520 px box halved the 1,000 px wide figures (theta, target logit during training)
# and their text to ~6 px.
_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
          "figure{display:inline-block;margin:10px 10px 20px 0;vertical-align:top;max-width:100%}"
          "img{max-width:100%;height:auto}figcaption{font-size:0.9em;color:#555}")


def write_report(run_dir: str | Path, title: str, facts: Mapping[str, str],
                 figures: Sequence[tuple[str, str]], name: str = "report.html") -> Path:
    """Write ``run_dir/name``: ``facts`` as a table, then ``figures`` as ``(caption, file relative to run_dir)``.

    Figures whose file is missing are left out and named under "not drawn". Returns the report's path.
    """
    run_dir = Path(run_dir)
    present = [(c, f) for c, f in figures if (run_dir / f).is_file()]
    missing = [f for _, f in figures if not (run_dir / f).is_file()]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    figs = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"{_size_attributes(run_dir / f)}>'
                   f"<figcaption>{html.escape(c)}</figcaption></figure>" for c, f in present)
    note = f"<p>not drawn: {html.escape(', '.join(missing))}</p>" if missing else ""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><table>{rows}</table>"
            f"{figs}{note}</body></html>\n")
    out = run_dir / name
    return atomic_write_text(out, page)


def png_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) pixels of a PNG file from its IHDR header, or None for another or a torn file."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _size_attributes(path: Path) -> str:
    """``width``/``height`` attributes: the browser lays the figure out at its own size before it loads."""
    size = png_size(path)
    return f' width="{size[0]}" height="{size[1]}"' if size else ""


def referenced_files(report: str | Path) -> list[str]:
    """Every ``src``/``href`` target of a report (to check that each exists)."""
    text = Path(report).read_text(encoding="utf-8")
    return [html.unescape(m) for m in re.findall(r'(?:src|href)="([^"]+)"', text)]
