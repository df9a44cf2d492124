"""Content hashes: the same payload always gives the same id (trial ids, cache keys)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(payload: Any, length: int = 12) -> str:
    """First ``length`` hex chars of the sha256 of the canonical JSON of ``payload``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
