"""Time, injectable so tests can move it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_ms() -> int:
    return int(time.time() * 1000)
