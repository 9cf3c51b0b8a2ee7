"""Where the shared data sets are, and the marker for tests that need them."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FIXTURE = Path(__file__).resolve().parent / "data" / "gpteacher_sample.jsonl"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} absent (shared data sets not mounted)"
)
