"""A dependency-free progress line on stderr (only when stderr is a terminal, or when forced)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, label: str, enabled: bool = True, every_s: float = 0.5):
        self.total, self.label, self.n = total, label, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.every, self.t0, self.last = every_s, time.time(), 0.0

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.time()
        if self.enabled and (now - self.last >= self.every or self.n == self.total):
            self.last = now
            rate = self.n / max(1e-9, now - self.t0)
            tot = f"/{self.total}" if self.total else ""
            eta = f" eta {((self.total - self.n) / rate):.0f}s" if self.total and rate > 0 else ""
            sys.stderr.write(f"\r{self.label}: {self.n}{tot} ({rate:.1f}/s){eta}   ")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
