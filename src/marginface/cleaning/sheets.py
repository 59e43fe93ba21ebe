"""Contact sheets for review: one PNG per flagged identity / pair (rows of captioned thumbnails) and an HTML index.

The PNGs are drawn with PIL (thumbnails and captions only; no plotting needed). The HTML page references the
PNGs by relative path, so the output folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from marginface.files import atomic_write, atomic_write_text

#: thumbnail side (px) and the caption strip below it
THUMB, CAPTION = 112, 24


@dataclass
class Row:
    """One row of a sheet: a heading and ``(image path or None, caption)`` cells (None: a grey placeholder)."""

    heading: str
    cells: list[tuple[Path | None, str]]


@dataclass
class Item:
    """One flagged identity or pair: a title, the rows, and lines of text for the HTML page."""

    title: str
    rows: list[Row]
    text: list[str] = field(default_factory=list)


def _thumb(path: Path | None):
    from PIL import Image

    if path is None or not Path(path).is_file():
        return Image.new("RGB", (THUMB, THUMB), (160, 160, 160))
    with Image.open(path) as im:
        return im.convert("RGB").resize((THUMB, THUMB))


def draw_item(item: Item, out_png: str | Path, max_cells: int = 8) -> Path:
    """Draw ``item`` as a PNG: title line, then per row a heading line and up to ``max_cells`` thumbnails."""
    from PIL import Image, ImageDraw

    line = 16
    width = max(1, min(max_cells, max((len(r.cells) for r in item.rows), default=1))) * THUMB
    height = line + sum(line + THUMB + CAPTION for _ in item.rows)
    sheet = Image.new("RGB", (max(width, 400), height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 2), item.title, fill="black")
    y = line
    for row in item.rows:
        draw.text((2, y + 2), row.heading, fill=(0, 0, 160))
        y += line
        for i, (path, caption) in enumerate(row.cells[:max_cells]):
            sheet.paste(_thumb(path), (i * THUMB, y))
            for j, text in enumerate(caption.split("\n")[:2]):
                draw.text((i * THUMB + 2, y + THUMB + 1 + 11 * j), text[:18], fill="black")
        y += THUMB + CAPTION
    return atomic_write(Path(out_png), sheet.save)


def write_sheet(out_dir: str | Path, title: str, items: Sequence[Item], summary: Sequence[str] = (),
                figures: Sequence[str] = ()) -> Path:
    """One PNG per item under ``out_dir/sheet/`` and ``out_dir/index.html`` listing them; returns the HTML path.

    ``figures``: file names inside ``out_dir`` (e.g. ``distributions.png``) shown under the summary; a name that
    does not exist there is an error (the page must not reference missing files)."""
    out_dir = Path(out_dir)
    (out_dir / "sheet").mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(s)}</p>" for s in summary]
    for name in figures:
        if not (out_dir / name).is_file():
            raise FileNotFoundError(f"figure {out_dir / name} does not exist")
        parts.append(f"<img src='{html.escape(name)}' alt='{html.escape(name)}'>")
    for i, item in enumerate(items):
        png = draw_item(item, out_dir / "sheet" / f"{i:04d}.png")
        parts.append(f"<h2 id='item{i}'>{i + 1}. {html.escape(item.title)}</h2>")
        parts += [f"<div>{html.escape(t)}</div>" for t in item.text]
        parts.append(f"<img src='sheet/{png.name}' alt='{html.escape(item.title)}'>")
    if not items:
        parts.append("<p>nothing flagged</p>")
    page = out_dir / "index.html"
    atomic_write_text(page, "\n".join(parts) + "\n")
    return page


def plot_distributions(panels: Sequence[dict], out_png: str | Path) -> Path:
    """Histograms of calibration distances, one panel per dict: ``title``, ``same``, ``different``, ``threshold``
    and optionally ``observed`` (e.g. each training identity's nearest test distance) — all cosine distances."""
    import numpy as np

    from marginface.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        series = [("same identity", panel["same"]), ("nearest other identity", panel["different"])]
        if panel.get("observed") is not None:
            series.append((panel.get("observed_label", "observed"), panel["observed"]))
        top = max(float(np.quantile(np.asarray(v), 0.995)) for _, v in series)
        bins = np.linspace(0, top, 60)
        for label, values in series:
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5,
                    label=f"{label} (n={len(values)})")
        ax.axvline(panel["threshold"], color="k", linestyle="--", linewidth=1,
                   label=f"threshold {panel['threshold']:.4f}")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("cosine distance 1 - cos")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
