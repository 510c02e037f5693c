"""The HTML report renders in a real browser (headless Chromium), offline.

Skipped when no Chromium is installed, except under ``CI=true``, where a missing browser
is a failure (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Everything that would reach the network or a desktop session is off: the page must
# render from the file alone.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _browser() -> str:
    found = os.environ.get("AUTODIM_CHROMIUM") or next(
        (p for p in map(shutil.which, BROWSERS) if p), None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no Chromium found (apt-get install -y chromium)")
    pytest.skip("no Chromium installed (apt-get install -y chromium)")


def _fakes():
    spec = importlib.util.spec_from_file_location(
        "viz_fakes", Path(__file__).parent / "viz" / "fakes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Rendered(HTMLParser):
    """Counts what plotly put into the DOM (script text is not parsed as elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: set[str] = set()
        self.main_svgs = 0
        self.points = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if "js-plotly-plot" in classes:  # set by Plotly.newPlot on a figure's div
            self.plots.add(a.get("id") or "")
        if tag == "svg" and "main-svg" in classes:
            self.main_svgs += 1
        if tag == "path" and "point" in classes:
            self.points += 1


def test_report_renders_every_figure_in_headless_chromium(tmp_path):
    browser = _browser()
    from autodim.viz.report import write_report

    result, _ = _fakes().make_fake_study(tmp_path / "study")
    report = write_report(result, tmp_path / "report.html")
    n_figs = int(report.read_text(encoding="utf-8").split(
        "name='autodim-figures' content='")[1].split("'")[0])
    assert n_figs >= 10
    cmd = [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Rendered()
    dom.feed(proc.stdout)
    assert dom.plots == {f"fig{i}" for i in range(n_figs)}, (
        f"rendered {sorted(dom.plots)} of {n_figs} figures")
    assert dom.main_svgs >= n_figs
    # Scatter markers became SVG paths: at least one per complete trial on the Pareto chart.
    assert dom.points >= len(result.study.trials)
