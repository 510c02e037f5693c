"""autodim.runtime: the allocator setting autodim predict scores with."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys
import numpy as np

def rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * {page} / 2**20

if sys.argv[1] == "tuned":
    from autodim.runtime import tune_allocator
    assert tune_allocator()
before = rss_mib()
block = np.ones(16 << 20, dtype=np.uint8)  # 16 MiB, freed at once
del block
print(rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_keeps_freed_blocks_for_the_next_call():
    """With glibc's defaults a freed 16 MiB block goes back to the system (the next batch
    faults its pages in again); tuned, it stays with the process."""
    import resource

    code = CHILD.format(page=resource.getpagesize())
    kept = {mode: float(subprocess.run([sys.executable, "-c", code, mode], check=True,
                                       capture_output=True, text=True).stdout.split()[-1])
            for mode in ("default", "tuned")}
    assert kept["default"] < 4 and kept["tuned"] > 12, kept
