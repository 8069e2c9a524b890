"""Safe file primitives: atomic writes and verified safetensors reads. Nothing here ever unpickles."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, and then renamed over the
    target (``os.replace`` is atomic on POSIX and Windows when both are on one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise a flat dict of tensors as safetensors bytes (tensors made contiguous, CPU)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return safetensors_save(clean, metadata=metadata)


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error}); the file is corrupt or truncated, "
                         f"restore it from a backup or re-save the checkpoint") from error


def read_verified_tensors(path: Path, expected_sha256: str | None, what: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checking its SHA-256 first when one was recorded."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing; the checkpoint is incomplete")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise ValueError(f"{what}: {path} does not match the checksum recorded in config.json "
                         f"({len(data)} bytes); it is corrupt, truncated or from another checkpoint")
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({error}); it is corrupt or "
                         f"truncated") from error


def cache_dir() -> Path:
    """atlas's cache folder: ``$XDG_CACHE_HOME/atlas`` (default ``~/.cache/atlas``); not created here."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "atlas"
