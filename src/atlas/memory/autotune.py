"""Automatic batch-size tuning: the largest batch that fits, found by probing and remembered on disk.

``autotune_batch_size(probe, max_batch=..., cache_path=..., key=...)`` calls ``probe(batch)`` (which runs one
representative forward pass at that batch size) and treats an out-of-memory error
(:func:`atlas.memory.guard.is_out_of_memory`) as "does not fit". It doubles from ``min_batch`` until a batch fails
or ``max_batch`` fits, then bisects between the last fitting and the first failing size: at most
ceil(log2(max_batch / min_batch)) + 1 doubling probes plus as many bisection probes. The search assumes fitting
is monotone in the batch size (what fits at b fits at every b' < b).

The answer is cached in a JSON file under a canonical string of ``key`` (model identity or hash, resolution,
precision, device name: whatever changes the memory a batch needs), with the largest batch that fitted and the
smallest that failed, so a later call with another ``max_batch`` reuses what is known. A cached answer is
returned without probing. A corrupt cache file is reported at WARNING and ignored (then replaced), never fatal.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from atlas.io import atomic_write_json
from atlas.memory.guard import free_memory, is_out_of_memory

__all__ = ["autotune_batch_size", "cache_key", "search_largest_fitting"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "atlas-batch-size-cache"
CACHE_VERSION = 1


def _canonical(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"key{where}={value!r} must be finite")
        return value
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(name, str) for name in value):
            raise TypeError(f"key{where} has non-string names {sorted(map(repr, value))}; use string names")
        return {name: _canonical(item, f"{where}[{name!r}]") for name, item in value.items()}
    raise TypeError(f"key{where} is a {type(value).__name__} ({value!r}); key values must be str, int, float, "
                    f"bool, None, torch.dtype, torch.device, paths, or lists/dicts of them (e.g. a model hash "
                    f"string rather than the model)")


def cache_key(key: dict) -> str:
    """Canonical string of ``key``: JSON with sorted names and no spaces (tuples become lists, dtypes and
    devices their names), so equal keys give equal strings whatever their order."""
    if not isinstance(key, dict) or not key:
        raise ValueError(f"key={key!r} must be a non-empty dict naming what the memory depends on, e.g. "
                         f"{{'model': sha256, 'resolution': 512, 'precision': 'bf16', 'device': 'NVIDIA H100'}}")
    return json.dumps(_canonical(key, ""), sort_keys=True, separators=(",", ":"))


def _read_cache(path: Path) -> dict[str, dict]:
    """The cache's entries; {} when the file is missing, and {} with a warning when it is unreadable."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a {CACHE_FORMAT} file")
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {CACHE_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        return entries
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logger.warning("Ignoring the batch-size cache %s: %s; batch sizes will be probed again and the file "
                       "replaced", path, error)
        return {}


def _valid_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _known_bounds(entry: Any, path: Path, key: str) -> tuple[int, int | None]:
    """(largest batch known to fit or 0, smallest batch known to fail or None) from a cache entry."""
    if entry is None:
        return 0, None
    fits, fails = (entry.get("largest_fitting"), entry.get("smallest_failing")) if isinstance(entry, dict) else (
        None, None)
    if not _valid_int(fits) or not (fails is None or (_valid_int(fails) and fails > fits)):
        logger.warning("Ignoring the malformed batch-size cache entry %s in %s: %r", key, path, entry)
        return 0, None
    return fits, fails


def _raise_min_batch_does_not_fit(error: BaseException, min_batch: int, key: str):
    message = (f"Batch-size autotuning: even min_batch={min_batch} runs out of memory (key {key}); lower "
               f"min_batch, the resolution or the precision, or enable tiling. Cause: {error}")
    try:
        new = type(error)(message)
    except TypeError:  # an exception class whose constructor wants other arguments
        raise error
    raise new from error


def search_largest_fitting(fits: Callable[[int], bool], *, min_batch: int, max_batch: int, known_fitting: int = 0,
                           known_failing: int | None = None) -> tuple[int, int | None]:
    """Largest b in [min_batch, max_batch] with ``fits(b)``, assuming fitting is monotone (b fits => b - 1 fits).

    Doubling from the largest size known to fit (or ``min_batch``, which must fit), then bisection against the
    smallest size known to fail: at most 1 + ceil(log2(max_batch / min_batch)) + ceil(log2(max_batch)) calls.
    Returns (largest fitting, smallest failing, or None when ``max_batch`` fits). ``known_*`` come from a cache.
    """
    lo = known_fitting if min_batch <= known_fitting <= max_batch else 0
    # hi: the smallest size known not to fit (max_batch + 1: none known within range)
    hi = min(known_failing, max_batch + 1) if known_failing is not None and known_failing > max(lo, min_batch) \
        else max_batch + 1
    if lo == 0:
        if not fits(min_batch):
            raise ValueError(f"min_batch={min_batch} does not fit, so no batch size in [{min_batch}, {max_batch}] "
                             f"does")
        lo = min_batch
    while hi == max_batch + 1 and lo < max_batch:  # doubling until a size fails or max_batch fits
        batch = min(2 * lo, max_batch)
        if fits(batch):
            lo = batch
        else:
            hi = batch
    while hi - lo > 1:  # bisection: lo fits, hi does not
        middle = (lo + hi) // 2
        if fits(middle):
            lo = middle
        else:
            hi = middle
    return lo, (hi if hi <= max_batch else None)


def autotune_batch_size(probe: Callable[[int], Any], *, max_batch: int, cache_path: str | Path, key: dict,
                        min_batch: int = 1) -> int:
    """The largest batch size in [min_batch, max_batch] for which ``probe(batch)`` raises no out-of-memory error.

    Args:
        probe: runs one representative step at the given batch size (e.g. a denoiser call at the generation
            resolution, with guidance doubling it if used); an out-of-memory error means "does not fit", any other
            error propagates. Its return value is ignored.
        max_batch: the largest batch worth having (the search never probes above it).
        cache_path: JSON file of answers (created or updated atomically).
        key: what the memory a batch needs depends on: model identity/hash, resolution, precision, device name.
        min_batch: the smallest acceptable batch; if it does not fit, its out-of-memory error is raised.
    """
    for name, value in (("min_batch", min_batch), ("max_batch", max_batch)):
        if not _valid_int(value):
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if min_batch > max_batch:
        raise ValueError(f"min_batch ({min_batch}) must be <= max_batch ({max_batch})")
    path, text = Path(cache_path), cache_key(key)
    entries = _read_cache(path)
    fits, fails = _known_bounds(entries.get(text), path, text)
    if fits >= max_batch:  # monotone: everything up to a fitting size fits
        logger.info("Batch size %d from the cache %s (largest known to fit: %d)", max_batch, path, fits)
        return max_batch
    if fails is not None and fails == fits + 1 and fits >= min_batch:
        logger.info("Batch size %d from the cache %s", fits, path)
        return fits

    probes = 0

    def fits_at(batch: int) -> bool:
        nonlocal probes
        probes += 1
        oom = False
        try:
            probe(batch)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if batch <= min_batch:
                _raise_min_batch_does_not_fit(error, min_batch, text)
            oom = True
        if oom:
            free_memory()  # after the except block, so the failed probe's tensors are unreachable
        return not oom

    lo, hi = search_largest_fitting(fits_at, min_batch=min_batch, max_batch=max_batch, known_fitting=fits,
                                    known_failing=fails)
    entries[text] = {"largest_fitting": lo, "smallest_failing": hi if hi is not None else fails,
                     "max_batch_probed": max_batch}
    atomic_write_json(path, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries})
    logger.info("Batch size %d found in %d probes (key %s), cached in %s", lo, probes, text, path)
    return lo
