"""Where a command's settings come from: flags, then a --config file, then the defaults.

A config file is JSON, TOML or YAML (by its suffix) holding the long flags' names (dashes or
underscores); a name the command does not take is refused, as is a setting an existing store has
already fixed (its seam, segment budget, system prompt and tier sizes are the manifest's).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from hypic_rag.errors import RequestError

DEFAULTS = {
    "seam": 8, "max_segment_tokens": 512, "batch_size": 16, "workers": 1, "k": 4, "mode": "hypic",
    "max_new_tokens": 32, "device_bytes": 512 * 2**20, "host_bytes": 2 * 2**30, "disk_bytes": 32 * 2**30,
    "system": "",
    "threshold": 0.05, "recompute_budget": 0.15,
}
FORMATS = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def load_config(path: str | None, allowed: set[str]) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise RequestError(f"config file not found: {p}")
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise RequestError(f"config file {p}: use a .json, .toml, .yaml or .yml file")
    text = p.read_text(encoding="utf-8")
    try:
        if kind == "TOML":
            data = tomllib.loads(text)
        elif kind == "JSON":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001  (each parser has its own error type)
        raise RequestError(f"config file {p} is not valid {kind}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RequestError(f"config file {p} must hold setting: value pairs, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RequestError(f"config file {p}: unknown setting(s) {', '.join(unknown)}; this command takes "
                           f"{', '.join(sorted(allowed))}")
    return data


def settings(args: argparse.Namespace, allowed: set[str]) -> tuple[dict, set[str]]:
    """The merged settings, and the names set explicitly (by a flag or the config file)."""
    from_file = load_config(getattr(args, "config", None), allowed)
    flags = {k: v for k, v in vars(args).items() if v is not None}
    merged = {**DEFAULTS, **from_file, **flags}
    return merged, set(from_file) | set(flags)


def check_store_fixed(manifest, s: dict, explicit: set[str]) -> None:
    """Refuse settings that an existing store fixed and that this run asks to change."""
    fixed = {"seam": manifest.seam_tokens, "max_segment_tokens": manifest.max_segment_tokens,
             "system": manifest.template.get("system", ""),
             "index_kind": (manifest.store.get("index") or {}).get("kind", "auto"),
             **{f"{t}_bytes": manifest.store.get(f"{t}_bytes") for t in ("device", "host", "disk")}}
    for name, value in fixed.items():
        if name in explicit and s[name] != value:
            raise RequestError(f"the store was built with {name.replace('_', '-')} {value!r}; "
                               f"{s[name]!r} cannot change it (build a new store with --store)")


def defaults_help(text: str, name: str) -> str:
    return f"{text} (default: {DEFAULTS[name]})" if name in DEFAULTS else text
