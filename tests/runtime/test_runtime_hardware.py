"""Hardware detection: table tests on injected capabilities, and detection with monkeypatched torch backends.

Regression tests for the public reference (atlas-reference.md §2.10): bf16 was never recommended on GPUs that
have it; MPS got fixed defaults instead of measured memory; the CPU was assumed to have no features; and the
mem_get_info fallback must be visible, not only logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from atlas import check_hardware
from atlas.runtime import hardware
from atlas.runtime.hardware import (Capabilities, cuda_feature_flags, detect_capabilities, format_report,
                                    recommendations, recommended_precision)

GIB = 1024**3


def caps(kind="cuda", cc=None, total=24 * GIB, free=20 * GIB, source="mem_get_info", **flags):
    """A Capabilities record with every flag written out by the test (no rule from the code under test)."""
    values = dict(bf16=False, fp16=False, tf32=False, cuda_graphs=False, flash_sdpa=False)
    values.update(flags)
    return Capabilities(kind, 0 if kind != "cpu" else None, f"fake {kind}", cc, total, free, source,
                        cpu_count=8, torch_version="2.5.0", cuda_version="12.4" if kind == "cuda" else None,
                        **values)


# Published compute capabilities and what their tensor cores do natively (NVIDIA architecture whitepapers).
GPUS = {
    "maxwell_gtx980": caps(cc=(5, 2), cuda_graphs=True),
    "pascal_gtx1080": caps(cc=(6, 1), fp16=True, cuda_graphs=True),
    "volta_v100": caps(cc=(7, 0), fp16=True, cuda_graphs=True),
    "turing_rtx2080": caps(cc=(7, 5), fp16=True, cuda_graphs=True),
    "ampere_rtx3090": caps(cc=(8, 6), bf16=True, fp16=True, tf32=True, cuda_graphs=True, flash_sdpa=True),
    "hopper_h100": caps(cc=(9, 0), total=80 * GIB, free=79 * GIB, bf16=True, fp16=True, tf32=True,
                        cuda_graphs=True, flash_sdpa=True),
    "mps": caps("mps", total=16 * GIB, free=12 * GIB, source="mps_recommended_minus_allocated", bf16=True,
                fp16=True),
    "cpu_plain": caps("cpu", source="proc_meminfo"),
    "cpu_amx": caps("cpu", source="proc_meminfo", bf16=True, fp16=True, flash_sdpa=True),
}


@pytest.mark.parametrize("cc,bf16,fp16,tf32,flash", [
    ((5, 2), False, False, False, False),  # Maxwell: no fp16 arithmetic
    ((6, 0), False, True, False, False),   # Pascal P100
    ((6, 1), False, True, False, False),   # Pascal GTX 10xx
    ((7, 0), False, True, False, False),   # Volta
    ((7, 5), False, True, False, False),   # Turing: bf16 only emulated (is_bf16_supported() would say True)
    ((8, 0), True, True, True, True),      # Ampere A100
    ((8, 9), True, True, True, True),      # Ada
    ((9, 0), True, True, True, True),      # Hopper
])
def test_cuda_feature_flags_by_architecture(cc, bf16, fp16, tf32, flash):
    flags = cuda_feature_flags(cc, "12.4")
    assert (flags["bf16"], flags["fp16"], flags["tf32"], flags["flash_sdpa"]) == (bf16, fp16, tf32, flash)


@pytest.mark.parametrize("version,expected", [("12.4", True), ("11.0", True), ("10.2", False), (None, False)])
def test_cuda_graphs_need_a_cuda_11_build(version, expected):
    assert cuda_feature_flags((8, 0), version)["cuda_graphs"] is expected


@pytest.mark.parametrize("name,expected", [
    ("maxwell_gtx980", "fp32"), ("pascal_gtx1080", "fp32"), ("volta_v100", "fp16"), ("turing_rtx2080", "fp16"),
    ("ampere_rtx3090", "bf16"), ("hopper_h100", "bf16"), ("mps", "fp32"), ("cpu_plain", "fp32"),
    ("cpu_amx", "fp32"),
])
def test_recommended_precision_table(name, expected):
    # The reference never used bf16 (it hard-coded fp16 autocast): Ampere and Hopper must get bf16.
    assert recommended_precision(GPUS[name]) == expected


def test_recommendations_for_ampere_mention_precision_tf32_and_graphs():
    advice = "\n".join(recommendations(GPUS["ampere_rtx3090"]))
    assert "precision: bf16" in advice
    assert "TF32: available" in advice
    assert "CUDA graphs: available" in advice
    assert "no flash SDPA" not in advice and "free" not in advice  # 20 of 24 GiB free: no memory warning


def test_recommendations_for_pascal_explain_what_is_missing():
    advice = "\n".join(recommendations(GPUS["pascal_gtx1080"]))
    assert "precision: fp32" in advice and "cc 6.1 < 7.0" in advice
    assert "TF32: not available" in advice
    assert "no flash SDPA kernel" in advice


def test_memory_hints_follow_free_memory():
    tight = caps(cc=(8, 6), total=8 * GIB, free=3 * GIB, bf16=True, tf32=True, cuda_graphs=True)
    advice = "\n".join(recommendations(tight))
    assert "only 3.0 GiB free" in advice
    assert "5.0 GiB of 8.0 GiB is already in use" in advice
    fallback = caps(cc=(8, 6), source="total_minus_reserved", bf16=True)
    assert any("upper bound" in line for line in recommendations(fallback))
    unknown = caps("cpu", total=None, free=None, source="unavailable")
    assert any("unknown" in line for line in recommendations(unknown))


def test_recommendations_for_mps_and_cpu():
    assert any("not available on MPS" in line for line in recommendations(GPUS["mps"]))
    cpu = "\n".join(recommendations(GPUS["cpu_plain"]))
    assert "precision: fp32" in cpu and "8 usable core(s)" in cpu and "CUDA graphs" not in cpu


def test_format_report_lists_every_field_readably():
    record = Capabilities("cuda", 1, "NVIDIA H100 80GB HBM3", (9, 0), 80 * GIB, 60 * GIB, "mem_get_info",
                          bf16=True, fp16=True, tf32=True, cuda_graphs=True, flash_sdpa=True, cpu_count=16,
                          torch_version="2.5.1", cuda_version="12.4", notes=("a note",))
    report = format_report(record)
    for text in ("cuda:1", "NVIDIA H100 80GB HBM3", "9.0", "80.0 GiB", "60.0 GiB (source: mem_get_info)",
                 "recommended precision  bf16", "12.4", "note: a note"):
        assert text in report
    assert "bf16 (native)          yes" in report


def test_to_dict_round_trips_through_json():
    for record in GPUS.values():
        data = json.loads(json.dumps(record.to_dict()))
        assert Capabilities.from_dict(data) == record
    with pytest.raises(ValueError, match="unknown Capabilities field"):
        Capabilities.from_dict({**GPUS["mps"].to_dict(), "vram": 1})


@pytest.mark.parametrize("change,match", [
    (dict(kind="tpu"), "device_kind='tpu'"), (dict(free=-1), "free_memory_bytes=-1"),
    (dict(cc=(8, 0, 1)), "compute_capability"),
])
def test_invalid_records_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        caps(**change)


# ------------------------------------------------------------------------------------------- detection

def test_detect_cpu_reads_real_system_memory():
    record = detect_capabilities("cpu")
    assert record.device_kind == "cpu" and record.compute_capability is None
    assert record.free_memory_source in ("proc_meminfo", "sysconf")
    assert 0 < record.free_memory_bytes <= record.total_memory_bytes
    assert not record.tf32 and not record.cuda_graphs
    assert record.cpu_count >= 1 and record.torch_version == torch.__version__


def _hide_proc(monkeypatch, cpuinfo=None):
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/meminfo":
            raise OSError("no /proc here")
        if str(self) == "/proc/cpuinfo" and cpuinfo is not None:
            return cpuinfo
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="needs os.sysconf")
def test_cpu_memory_falls_back_to_sysconf_and_says_so(monkeypatch):
    _hide_proc(monkeypatch)
    record = detect_capabilities("cpu")
    assert record.free_memory_source == "sysconf"
    assert record.total_memory_bytes == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_cpu_features_come_from_the_cpu_flags(monkeypatch):
    # The reference switched everything off on CPU; a CPU with AMX does have native bf16.
    _hide_proc(monkeypatch, cpuinfo="model name\t: Fake Xeon\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    record = detect_capabilities("cpu")
    assert record.bf16 and not record.fp16 and record.name == "Fake Xeon"
    _hide_proc(monkeypatch, cpuinfo="model name\t: Old\nflags\t\t: fpu sse avx2\n")
    assert not detect_capabilities("cpu").bf16


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda reporting one 40 GiB cc 8.0 GPU with 3 GiB reserved by this process."""
    props = SimpleNamespace(name="Fake A100", major=8, minor=0, total_memory=40 * GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 3 * GIB)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    return monkeypatch


def test_detect_cuda_uses_mem_get_info(fake_cuda):
    fake_cuda.setattr(torch.cuda, "mem_get_info", lambda index=None: (10 * GIB, 40 * GIB))
    record = detect_capabilities("cuda")
    assert (record.device_kind, record.device_index, record.name, record.compute_capability) == \
        ("cuda", 0, "Fake A100", (8, 0))
    assert (record.total_memory_bytes, record.free_memory_bytes, record.free_memory_source) == \
        (40 * GIB, 10 * GIB, "mem_get_info")
    assert record.bf16 and record.tf32 and record.cuda_graphs and record.flash_sdpa and record.notes == ()
    assert recommended_precision(record) == "bf16"


def test_mem_get_info_raising_falls_back_to_total_minus_reserved(fake_cuda, caplog):
    def broken(index=None):
        raise RuntimeError("CUDA driver too old")

    fake_cuda.setattr(torch.cuda, "mem_get_info", broken)
    with caplog.at_level(logging.WARNING, logger="atlas.runtime.hardware"):
        record = detect_capabilities("cuda:0")
    assert record.free_memory_bytes == 37 * GIB and record.free_memory_source == "total_minus_reserved"
    assert "CUDA driver too old" in record.notes[0]
    assert any("CUDA driver too old" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_missing_mem_get_info_falls_back_too(fake_cuda):
    fake_cuda.delattr(torch.cuda, "mem_get_info")
    record = detect_capabilities("cuda")
    assert record.free_memory_bytes == 37 * GIB and record.free_memory_source == "total_minus_reserved"
    assert "missing" in record.notes[0]


def test_cuda_index_out_of_range_is_a_clear_error(fake_cuda):
    with pytest.raises(ValueError, match="CUDA device index 3 does not exist; this machine has 1"):
        detect_capabilities("cuda:3")


def test_detect_mps_measures_memory(monkeypatch):
    # The reference returned fixed MPS defaults; memory must come from torch.mps.
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GIB, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2 * GIB, raising=False)
    record = detect_capabilities("mps")
    assert record.device_kind == "mps" and record.fp16 and not record.cuda_graphs
    assert (record.total_memory_bytes, record.free_memory_bytes) == (16 * GIB, 14 * GIB)
    assert record.free_memory_source == "mps_recommended_minus_allocated"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_requesting_absent_cuda_raises():
    with pytest.raises(RuntimeError, match="torch.cuda.is_available\\(\\) is False"):
        detect_capabilities("cuda")


def test_unsupported_device_type_raises():
    with pytest.raises(ValueError, match="'meta' is not supported"):
        detect_capabilities("meta")
    with pytest.raises(ValueError, match="is not a device"):
        detect_capabilities("not-a-device")


# ------------------------------------------------------------------------------------------------ face

def test_check_hardware_prints_report_and_json(capsys):
    assert check_hardware.main(["--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "recommended precision" in text and "Recommendations:" in text
    assert check_hardware.main(["--json", "--device", "cpu"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["capabilities"]["device_kind"] == "cpu"
    assert document["recommended_precision"] == "fp32" and document["recommendations"]
    assert Capabilities.from_dict(document["capabilities"]).device_kind == "cpu"


def test_check_hardware_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "atlas.check_hardware", "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["capabilities"]["device_kind"] in hardware.DEVICE_KINDS
