"""autodim.viz imports plotly lazily and exposes every figure by name."""

from __future__ import annotations

import subprocess
import sys


def test_importing_autodim_and_viz_does_not_import_plotly():
    code = ("import sys, autodim, autodim.viz; "
            "assert 'plotly' not in sys.modules, 'plotly imported'; "
            "autodim.viz.plan_dims_figure; assert 'plotly' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves():
    import autodim.viz as viz

    for name in viz.__all__:
        assert callable(getattr(viz, name)), name
    assert set(viz.__all__) <= set(dir(viz))
