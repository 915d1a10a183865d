import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

RACCOON_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"


@pytest.fixture
def raccoon_dir():
    """The shared raccoon dataset; tests that use it skip where it is absent."""
    if not RACCOON_DIR.is_dir():
        pytest.skip(f"raccoon dataset not found at {RACCOON_DIR}")
    return RACCOON_DIR
