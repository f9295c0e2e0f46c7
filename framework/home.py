"""Where tokenbridge keeps what it builds and caches: ``$TOKENBRIDGE_HOME`` (default
``~/.cache/tokenbridge``): the token-mapping cache (``mapping/cache.py``) and the demo zoo."""

from __future__ import annotations

import os
from pathlib import Path


def tokenbridge_home() -> Path:
    return Path(os.environ.get("TOKENBRIDGE_HOME", Path.home() / ".cache" / "tokenbridge")).expanduser()


__all__ = ["tokenbridge_home"]
