import re

import numpy as np
import pytest
from PIL import Image

from marginface.cleaning.sheets import THUMB, Item, Row, draw_item, write_sheet


def test_sheet_png_rows_and_html_references_existing_files(tmp_path):
    img = tmp_path / "face.png"
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(img)
    item = Item("a ~ b: 0.123", [Row("a", [(img, "1.png\nd=0.1")] * 3), Row("b", [(None, "missing")])], ["a\tb"])
    png = draw_item(item, tmp_path / "one.png")
    with Image.open(png) as im:
        assert im.width >= 3 * THUMB and im.height > 2 * THUMB
        assert im.getpixel((5, 16 + 16 + 5)) == (200, 200, 200)  # first thumbnail of the first row
    page = write_sheet(tmp_path / "out", "title <x>", [item, item], ["2 pairs"])
    text = page.read_text()
    refs = re.findall(r"src='([^']+)'", text)
    assert refs == ["sheet/0000.png", "sheet/0001.png"] and all((page.parent / r).is_file() for r in refs)
    assert "title &lt;x&gt;" in text and "2 pairs" in text
    assert "nothing flagged" in write_sheet(tmp_path / "empty", "t", []).read_text()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_sheet(tmp_path / "out", "t", [], figures=["missing.png"])


def test_plot_distributions_writes_a_png(tmp_path):
    from marginface.cleaning.sheets import plot_distributions

    rng = np.random.default_rng(0)
    png = plot_distributions([{"title": "t", "same": rng.normal(0.2, 0.05, 50), "different": rng.normal(0.6, 0.1, 50),
                               "threshold": 0.4, "observed": rng.normal(0.5, 0.1, 20)}], tmp_path / "d.png")
    with Image.open(png) as im:
        assert im.width > 300 and im.height > 200
