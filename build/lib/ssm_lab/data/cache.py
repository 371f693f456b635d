"""Generated datasets cached in ``data_dir``: one ``.npz`` per set of generation parameters
(the file name carries a hash of them), written atomically so a reader never sees half a file
and two processes generating at once both end with a whole one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cache_path(directory: str | Path, name: str, params: dict[str, Any]) -> Path:
    """``<directory>/<name>-<hash of params>.npz``; params must be JSON-serialisable."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return Path(directory) / f"{name}-{key}.npz"


def cached_arrays(
    directory: str | Path, name: str, params: dict[str, Any], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` makes for ``params``, from the cache when there, else built and
    stored (with the params, under the key ``__params__``, for a reader of the folder)."""
    path = cache_path(directory, name, params)
    if path.exists():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files if key != "__params__"}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __params__=np.array(json.dumps(params, sort_keys=True)), **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays
