"""Fonts that ship inside installed wheels, so pages render the same on every machine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageFont


@dataclass(frozen=True)
class FontFamily:
    name: str
    regular: Path
    bold: Path
    monospace: bool = False

    def covers(self, text: str) -> bool:
        """True when both weights have a glyph for every character of `text`."""
        return all(set(map(ord, text)) <= _codepoints(path) for path in (self.regular, self.bold))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"font package {package!r} is not installed (run `make setup`)")
    return Path(spec.submodule_search_locations[0])


@cache
def _codepoints(path: Path) -> frozenset[int]:
    return frozenset(TTFont(path, lazy=True).getBestCmap())


@cache
def font_families() -> tuple[FontFamily, ...]:
    """Every family the generator draws from: DejaVu (from matplotlib) and five Google/Adobe families."""
    dejavu = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    wheel = {
        name: _package_dir(name) / "files"
        for name in (
            "font_lato",
            "font_caladea",
            "font_source_sans_pro",
            "font_source_serif_pro",
            "font_roboto",
        )
    }
    return (
        FontFamily("DejaVu Sans", dejavu / "DejaVuSans.ttf", dejavu / "DejaVuSans-Bold.ttf"),
        FontFamily("DejaVu Serif", dejavu / "DejaVuSerif.ttf", dejavu / "DejaVuSerif-Bold.ttf"),
        FontFamily(
            "DejaVu Sans Mono", dejavu / "DejaVuSansMono.ttf", dejavu / "DejaVuSansMono-Bold.ttf", True
        ),
        FontFamily("Lato", wheel["font_lato"] / "Lato-Regular.ttf", wheel["font_lato"] / "Lato-Bold.ttf"),
        FontFamily(
            "Caladea",
            wheel["font_caladea"] / "Caladea-Regular.ttf",
            wheel["font_caladea"] / "Caladea-Bold.ttf",
        ),
        FontFamily(
            "Source Sans Pro",
            wheel["font_source_sans_pro"] / "SourceSansPro-Regular.ttf",
            wheel["font_source_sans_pro"] / "SourceSansPro-Bold.ttf",
        ),
        FontFamily(
            "Source Serif Pro",
            wheel["font_source_serif_pro"] / "SourceSerifPro-Regular.ttf",
            wheel["font_source_serif_pro"] / "SourceSerifPro-Bold.ttf",
        ),
        FontFamily(
            "Roboto", wheel["font_roboto"] / "Roboto-Regular.ttf", wheel["font_roboto"] / "Roboto-Bold.ttf"
        ),
    )


@cache
def load_font(path: Path, size_px: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font at a pixel size."""
    return ImageFont.truetype(str(path), size_px)
