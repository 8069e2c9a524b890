"""Batch-size autotuning: binary search against fake probes with a known threshold, and the on-disk cache."""

import json
import logging
import math

import pytest
import torch

from atlas.memory.autotune import autotune_batch_size, cache_key, search_largest_fitting

KEY = {"model": "sha256:0123abcd", "resolution": 512, "precision": "bf16", "device": "NVIDIA GeForce RTX 3060"}


class Probe:
    """Fits (returns) for batch <= threshold, raises an out-of-memory error above it; records every batch."""

    def __init__(self, threshold, error=lambda b: torch.OutOfMemoryError(f"CUDA out of memory at batch {b}")):
        self.threshold, self.error, self.batches = threshold, error, []

    def __call__(self, batch):
        self.batches.append(batch)
        if batch > self.threshold:
            raise self.error(batch)


def never_called(batch):
    raise AssertionError(f"the cache should have answered, but probe({batch}) was called")


@pytest.mark.parametrize("min_batch, max_batch", [(1, 1), (1, 2), (1, 7), (1, 64), (1, 100), (3, 40), (5, 5)])
def test_search_finds_the_largest_fitting_batch_in_logarithmically_many_calls(min_batch, max_batch):
    bound = 1 + math.ceil(math.log2(max_batch / min_batch)) + math.ceil(math.log2(max_batch))
    for threshold in range(min_batch, max_batch + 3):  # every answer, exhaustively
        calls = []
        largest, smallest_failing = search_largest_fitting(lambda b: calls.append(b) or b <= threshold,
                                                           min_batch=min_batch, max_batch=max_batch)
        assert largest == min(threshold, max_batch)
        assert smallest_failing == (threshold + 1 if threshold < max_batch else None)
        assert len(calls) <= bound, (threshold, calls)
        assert min_batch <= min(calls) and max(calls) <= max_batch and len(set(calls)) == len(calls)


def test_search_uses_known_bounds():
    calls = []
    assert search_largest_fitting(lambda b: calls.append(b) or b <= 37, min_batch=1, max_batch=100,
                                  known_fitting=32, known_failing=40) == (37, 38)
    assert all(32 < b < 40 for b in calls) and len(calls) <= 3
    with pytest.raises(ValueError, match="min_batch=4 does not fit"):
        search_largest_fitting(lambda b: False, min_batch=4, max_batch=8)


@pytest.mark.parametrize("threshold", [1, 2, 37, 64, 99, 100, 1000])
def test_autotune_probes_logarithmically_many_times(tmp_path, threshold):
    probe = Probe(threshold)
    assert autotune_batch_size(probe, max_batch=100, cache_path=tmp_path / "c.json", key=KEY) == min(threshold, 100)
    assert len(probe.batches) <= 2 * math.ceil(math.log2(100)) + 1


def test_min_batch_is_the_floor_of_the_search(tmp_path):
    probe = Probe(13)
    assert autotune_batch_size(probe, max_batch=40, min_batch=3, cache_path=tmp_path / "c.json", key=KEY) == 13
    assert probe.batches[:4] == [3, 6, 12, 24] and min(probe.batches) == 3


def test_runtime_errors_saying_out_of_memory_count_as_not_fitting(tmp_path):
    probe = Probe(5, error=lambda b: RuntimeError(f"CUDA out of memory. Tried to allocate {b} GiB"))
    assert autotune_batch_size(probe, max_batch=16, cache_path=tmp_path / "c.json", key=KEY) == 5


def test_a_cached_answer_is_returned_without_probing(tmp_path):
    path = tmp_path / "cache" / "batch_sizes.json"
    assert autotune_batch_size(Probe(6), max_batch=32, cache_path=path, key=KEY) == 6
    data = json.loads(path.read_text())
    assert data["entries"][cache_key(KEY)] == {"largest_fitting": 6, "smallest_failing": 7, "max_batch_probed": 32}
    reordered = dict(reversed(list(KEY.items())))
    assert autotune_batch_size(never_called, max_batch=32, cache_path=path, key=reordered) == 6
    assert autotune_batch_size(never_called, max_batch=100, cache_path=path, key=KEY) == 6  # 7 is known to fail
    assert autotune_batch_size(never_called, max_batch=4, cache_path=path, key=KEY) == 4  # 6 fits, so 4 does


def test_each_key_has_its_own_entry(tmp_path):
    path = tmp_path / "c.json"
    autotune_batch_size(Probe(6), max_batch=32, cache_path=path, key=KEY)
    probe = Probe(2)
    assert autotune_batch_size(probe, max_batch=32, cache_path=path, key={**KEY, "resolution": 1024}) == 2
    assert probe.batches  # another resolution is probed
    assert len(json.loads(path.read_text())["entries"]) == 2
    assert autotune_batch_size(never_called, max_batch=32, cache_path=path, key=KEY) == 6  # first entry kept


def test_a_larger_max_batch_resumes_from_what_is_known(tmp_path):
    path = tmp_path / "c.json"
    assert autotune_batch_size(Probe(1000), max_batch=16, cache_path=path, key=KEY) == 16
    assert json.loads(path.read_text())["entries"][cache_key(KEY)]["smallest_failing"] is None
    probe = Probe(40)
    assert autotune_batch_size(probe, max_batch=64, cache_path=path, key=KEY) == 40
    assert min(probe.batches) > 16  # sizes up to 16 are known to fit


def test_key_is_canonical_and_rejects_values_without_a_stable_text():
    assert cache_key({"a": 1, "shape": (2, 3)}) == cache_key({"shape": [2, 3], "a": 1}) == '{"a":1,"shape":[2,3]}'
    assert cache_key({"dtype": torch.bfloat16, "device": torch.device("cpu")}) == \
        '{"device":"cpu","dtype":"torch.bfloat16"}'
    with pytest.raises(ValueError, match="non-empty dict"):
        cache_key({})
    with pytest.raises(TypeError, match=r"key\['model'\] is a Linear"):
        cache_key({"model": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="must be finite"):
        cache_key({"scale": float("nan")})


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "something else"}',
                                     '{"format": "atlas-batch-size-cache", "version": 99, "entries": {}}',
                                     '{"format": "atlas-batch-size-cache", "version": 1, "entries": []}'])
def test_a_corrupt_cache_is_reported_ignored_and_replaced(tmp_path, caplog, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    probe = Probe(3)
    with caplog.at_level(logging.WARNING, logger="atlas.memory.autotune"):
        assert autotune_batch_size(probe, max_batch=8, cache_path=path, key=KEY) == 3
    assert probe.batches
    assert any("Ignoring the batch-size cache" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert autotune_batch_size(never_called, max_batch=8, cache_path=path, key=KEY) == 3  # now valid again


def test_a_malformed_entry_is_reported_and_probed_again(tmp_path, caplog):
    path = tmp_path / "c.json"
    autotune_batch_size(Probe(3), max_batch=8, cache_path=path, key=KEY)
    data = json.loads(path.read_text())
    data["entries"][cache_key(KEY)] = {"largest_fitting": "three", "smallest_failing": 4}
    path.write_text(json.dumps(data))
    probe = Probe(3)
    with caplog.at_level(logging.WARNING, logger="atlas.memory.autotune"):
        assert autotune_batch_size(probe, max_batch=8, cache_path=path, key=KEY) == 3
    assert probe.batches and "malformed batch-size cache entry" in caplog.text


def test_other_errors_propagate_and_nothing_is_cached(tmp_path):
    path = tmp_path / "c.json"
    failure = ValueError("probe failed for another reason")

    def probe(batch):
        if batch == 4:
            raise failure
    with pytest.raises(ValueError) as info:
        autotune_batch_size(probe, max_batch=16, cache_path=path, key=KEY)
    assert info.value is failure and not path.exists()


def test_when_min_batch_does_not_fit_its_out_of_memory_error_is_raised(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(torch.OutOfMemoryError, match="even min_batch=2 runs out of memory") as info:
        autotune_batch_size(Probe(1), max_batch=16, min_batch=2, cache_path=path, key=KEY)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert not path.exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch=0), "max_batch=0"), (dict(max_batch=4, min_batch=0), "min_batch=0"),
    (dict(max_batch=4, min_batch=5), r"min_batch \(5\) must be <= max_batch \(4\)"),
    (dict(max_batch=2.5), "max_batch=2.5"),
])
def test_arguments_are_validated(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        autotune_batch_size(never_called, cache_path=tmp_path / "c.json", key=KEY, **kwargs)
