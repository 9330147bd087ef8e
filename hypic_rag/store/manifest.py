"""store_dir/manifest.json: what built a store, so a stale or foreign store is refused."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hypic_rag.errors import StoreError

FORMAT = "hypic_rag/2"  # 2: the model fingerprint hashes every weight byte (1 sampled each tensor's ends)


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
        directory = Path(directory)
        path = directory / "manifest.json"
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"{directory} is a file, not a store directory; pass the directory a store was built in")
        if not directory.is_dir():
            raise StoreError(f"store directory does not exist: {directory}")
        if not path.is_file():
            raise StoreError(f"{directory} is not a hypic_rag store (no manifest.json); build one with "
                             "`hypic-rag precompute CORPUS --model PATH --store DIR`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"store manifest {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"store manifest {path} is unreadable: it holds a JSON {type(data).__name__}, not an object")
        if data.get("format") == "hypic_rag/1":
            raise StoreError(f"store {directory} was built by an older hypic_rag (format 1), whose model fingerprint "
                             "sampled only the ends of each weight tensor; rebuild it into a new directory with "
                             "`hypic-rag precompute CORPUS --store NEW_DIR`")
        if data.get("format") != FORMAT:
            raise StoreError(f"store manifest {path} has unknown format {data.get('format')!r} (this library reads {FORMAT})")
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        missing = sorted(set(names) - set(data) - {"format"})
        if unknown or missing:
            raise StoreError(f"store manifest {path} is unreadable: unknown keys {unknown}, missing keys {missing}")
        kinds = {"fingerprint": str, "model_path": (str, type(None)), "seam_tokens": int, "template": dict,
                 "embedder": str, "embedding_dim": int, "max_segment_tokens": int, "store": dict, "format": str}
        wrong = [k for k, kind in kinds.items() if not isinstance(data[k], kind) or isinstance(data[k], bool)]
        if wrong:
            raise StoreError(f"store manifest {path} is unreadable: wrong value types for {wrong}")
        return cls(**data)

    def write(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "manifest.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, directory / "manifest.json")

    @property
    def interior_dtype(self) -> str:
        """The dtype the store's entries keep E and M in (from its fingerprint)."""
        from hypic_rag.models.fingerprint import ModelFingerprint

        return ModelFingerprint.from_string(self.fingerprint).interior_dtype

    def check_compatible(self, fingerprint: str, directory: str | Path) -> None:
        if fingerprint != self.fingerprint:
            raise StoreError(
                f"store {directory} was built for model fingerprint {self.fingerprint} (model {self.model_path}); "
                f"this model and setting is {fingerprint}. Use the same model, dtype, seam size and system "
                "prompt, or build a new store in another directory."
            )
