"""Access to the shared KES test vectors (``KESD_VECTORS`` overrides their location)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "vectors"


def directory() -> Path:
    """The vectors directory: ``$KESD_VECTORS``, else ``../shared/reference/vectors`` beside the repo."""
    return Path(os.environ.get("KESD_VECTORS", _DEFAULT))


def load(name: str) -> Any:
    """Parse one vectors file, e.g. ``load("policy.json")``."""
    return json.loads((directory() / name).read_text())
