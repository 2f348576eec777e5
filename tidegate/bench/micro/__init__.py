"""Engine microbenchmarks: measured in-process on the engines themselves (the only part of
bench/ that imports the engine layer; scenarios run them as subprocesses)."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """Where the prepared models are: ``TIDEGATE_DATA_DIR``, else the server's default data
    folder."""
    env = os.environ.get("TIDEGATE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("tidegate", appauthor=False))
