"""Issue 7: a long-running process that saves and loads .kae files does not grow."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import pytest
from PIL import Image

STATM = Path("/proc/self/statm")
WARM_UP = 20  # the runtime's and the model's one-time allocations happen in these
CYCLES = 300
LIMIT_MB = 50


def _rss_mb() -> float:
    """Resident set size now (not the peak: a leak shows as RSS that stays)."""
    resident_pages = int(STATM.read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not STATM.exists(), reason="reads the RSS from /proc (Linux)")
def test_save_open_load_cycles_do_not_leak(make_image):
    # 40x32: enough pixels (PIXELS_PER_FILTER) that every save fits a restoration filter too
    images = [make_image(40, 32, mode, seed) for seed, mode in enumerate(("RGB", "RGBA", "L"))]

    def cycle(number: int) -> None:
        buffer = io.BytesIO()
        images[number % len(images)].save(buffer, "KAE", quality=50)
        buffer.seek(0)
        with Image.open(buffer) as im:
            im.load()

    for number in range(WARM_UP):
        cycle(number)
    gc.collect()
    start = _rss_mb()
    samples = []
    for number in range(CYCLES):
        cycle(number)
        if number % 100 == 99:
            gc.collect()
            samples.append(round(_rss_mb() - start, 1))
    assert samples[-1] < LIMIT_MB, f"RSS grew by {samples} MB after each 100 cycles"
