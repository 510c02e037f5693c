"""Static images (PNG, SVG) of the plotly figures, for papers and slides.

Needs the ``[static]`` extra (kaleido), which renders through a Chrome or Chromium already
on the machine (Debian: ``apt-get install chromium``); kaleido's own browser download is
not used. One browser session renders all figures of a call (about 4 s a figure).

Example:
    >>> from autodim.viz.static import write_images
    >>> write_images([res.figure()], ["front.png"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Sequence

from autodim.errors import ConfigError

__all__ = ["FORMATS", "browser_path", "check_static", "write_images", "figure_file_names"]

FORMATS = ("png", "svg")
_SIZE = {"width": 1100, "height": 650}
_RENDER_TRIES = 3


def check_static() -> None:
    """Raise a one-line :class:`ConfigError` unless kaleido and a browser are there."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ConfigError("PNG/SVG export needs kaleido: pip install 'autodim[static]' (and a "
                          "Chrome/Chromium, e.g. apt-get install chromium)") from None
    if not browser_path():
        raise ConfigError("PNG/SVG export needs a Chrome or Chromium on PATH (Debian: "
                          "apt-get install chromium; or set BROWSER_PATH)")


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido will drive (``$BROWSER_PATH`` first, then PATH)."""
    import shutil

    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                 "chrome", "msedge"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_images(figures: Sequence, paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Write each figure to its path; the format comes from the suffix (.png or .svg).
    Files are written beside their target and renamed into place."""
    import plotly.io as pio

    from autodim._io import atomic_path

    paths = [Path(p) for p in paths]
    for p in paths:
        if p.suffix.lower().lstrip(".") not in FORMATS:
            raise ConfigError(f"{p}: an image must end in .png or .svg")
    check_static()
    figures = list(figures)
    formats = [p.suffix.lower().lstrip(".") for p in paths]
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p, suffix=p.suffix)) for p in paths]
        todo = list(range(len(paths)))
        for _ in range(_RENDER_TRIES):
            pio.write_images([figures[i] for i in todo], [str(tmps[i]) for i in todo],
                             format=[formats[i] for i in todo],
                             width=_SIZE["width"], height=_SIZE["height"])
            # kaleido reports a failed render (a browser timeout under load) by deleting
            # the file it claimed, not by raising: those figures are rendered again.
            todo = [i for i in todo if not tmps[i].exists() or not tmps[i].stat().st_size]
            if not todo:
                break
        if todo:
            raise ConfigError(f"{paths[todo[0]]}: the browser rendered no image "
                              f"({_RENDER_TRIES} tries; kaleido drives {browser_path()})")
    return paths


def figure_file_names(figures: Sequence, fmt: str) -> list[str]:
    """``01-study-quick-validation-auc-vs-embedding-bytes.png``, ... from the titles."""
    names = []
    for i, fig in enumerate(figures, 1):
        title = getattr(getattr(fig.layout, "title", None), "text", None) or "figure"
        slug = re.sub(r"[^a-z0-9]+", "-", str(title).lower()).strip("-")[:60] or "figure"
        names.append(f"{i:02d}-{slug}.{fmt}")
    return names
