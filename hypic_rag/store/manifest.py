"""store_dir/manifest.json: what built a store, so a stale or foreign store is refused."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT = "hypic_rag/1"


@dataclass(frozen=True)
class Manifest:
    fingerprint: str
    model_path: str | None
    seam_tokens: int
    template: dict
    embedder: str
    embedding_dim: int
    max_segment_tokens: int
    store: dict
    format: str = FORMAT

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / "manifest.json"
        if not Path(directory).is_dir():
            raise ValueError(f"store directory does not exist: {directory}")
        if not path.is_file():
            raise ValueError(f"{directory} is not a hypic_rag store (no manifest.json); build one with "
                             "`hypic-rag precompute CORPUS --model PATH --store DIR`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown store format {data.get('format')!r} (this library reads {FORMAT})")
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"store manifest {path} is unreadable: {exc}") from None

    def write(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "manifest.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, directory / "manifest.json")

    def check_compatible(self, fingerprint: str, directory: str | Path) -> None:
        if fingerprint != self.fingerprint:
            raise ValueError(
                f"store {directory} was built for model fingerprint {self.fingerprint} (model {self.model_path}); "
                f"this model and setting is {fingerprint}. Use the same model, dtype, seam size and system "
                "prompt, or build a new store in another directory."
            )
