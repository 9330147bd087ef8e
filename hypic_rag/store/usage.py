"""store_dir/usage.json: a store's cumulative request counters, across runs and processes.

Each HypicRAG counts its own requests and adds them to the file after every request (read, add,
replace atomically; a process that races another may lose the other's last increment, never the
file). `hypic-rag inspect` reads it without loading the model. A missing or damaged file counts
from zero.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE = "usage.json"


@dataclass
class Usage:
    requests: int = 0
    segment_hits: int = 0
    segment_misses: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tier_hits: dict = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> "Usage":
        try:
            data = json.loads((Path(directory) / FILE).read_text(encoding="utf-8"))
            usage = cls(**{k: data[k] for k in ("requests", "segment_hits", "segment_misses", "prompt_tokens",
                                                 "cached_tokens")}, tier_hits=dict(data.get("tier_hits", {})))
            if not all(isinstance(v, int) and v >= 0 for v in (*asdict(usage).values(),) if not isinstance(v, dict)):
                raise ValueError("negative or non-integer counter")
            return usage
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def add(self, other: "Usage") -> None:
        for name in ("requests", "segment_hits", "segment_misses", "prompt_tokens", "cached_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for tier, hits in other.tier_hits.items():
            self.tier_hits[tier] = self.tier_hits.get(tier, 0) + hits

    def add_to_file(self, directory: str | Path) -> None:
        """Add these counts to the store's file (atomic replace)."""
        total = Usage.read(directory)
        total.add(self)
        path = Path(directory) / FILE
        tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(total), sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
