"""Device peaks: jax's device kinds find their own datasheet entry, never a namesake's.

Expected figures are the vendors' published dense peaks (NVIDIA datasheets list bf16 "with
sparsity", twice the dense figure; Google's Cloud TPU pages list per-chip bf16 peaks and HBM
bandwidth), written here from those pages, not from sweeps/hardware.py.
"""

import os
import warnings
from pathlib import Path

import pytest

from archscale.sweeps import hardware

TERA = 1e12

# jax device_kind -> (dense bf16 TFLOP/s, memory GB/s) from the vendor's spec sheet.
PUBLISHED = {
    "NVIDIA H100 80GB HBM3": (1979 / 2, 3350),  # H100 SXM
    "NVIDIA H100 PCIe": (1513 / 2, 2000),
    "NVIDIA H200": (1979 / 2, 4800),  # H200 SXM
    "NVIDIA H200 NVL": (1671 / 2, 4800),
    "NVIDIA GH200 480GB": (1979 / 2, 4000),  # 96 GB HBM3: not an H200's 4.8 TB/s
    "NVIDIA A100-SXM4-80GB": (312, 2039),
    "NVIDIA A100-SXM4-40GB": (312, 1555),
    "NVIDIA A100 80GB PCIe": (312, 1935),
    "NVIDIA L40S": (362.05, 864),  # its datasheet lists dense and sparse (733) figures
    "NVIDIA L40": (181.05, 864),
    "NVIDIA L4": (242 / 2, 300),  # not an L40's or L40S's
    "TPU v4": (275, 1200),
    "TPU v5 lite": (197, 819),  # v5e
    "TPU v5": (459, 2765),  # v5p
    "TPU v6 lite": (918, 1640),  # v6e
}


@pytest.mark.parametrize("kind", PUBLISHED)
def test_each_device_kind_gets_its_own_datasheet_peaks(kind):
    bf16_tflops, gb_per_s = PUBLISHED[kind]
    peaks = hardware.known_peaks(kind)
    assert peaks is not None, kind
    assert peaks.bf16_flops == pytest.approx(bf16_tflops * TERA, rel=0.01)
    assert peaks.bandwidth == pytest.approx(gb_per_s * 1e9, rel=0.01)


def test_kinds_match_whole_names_in_any_case_and_spacing():
    assert hardware.known_peaks("  nvidia   h200 ") == hardware.known_peaks("NVIDIA H200")
    # Each of these contains (or is contained in) a listed kind but is not listed: the v4i
    # inference chip, the HBM3e GH200 (4.9 TB/s), an H100 of unstated memory.
    for kind in ["TPU v4 lite", "NVIDIA GH200 144G HBM3e", "NVIDIA H100",
                 "NVIDIA GeForce RTX 4090", "cpu"]:
        assert hardware.known_peaks(kind) is None, kind


def test_a_tpu_v3_device_is_half_a_chip():
    """JAX shows a TPU v3 chip (123 TFLOP/s, 900 GB/s) as two devices, one per TensorCore."""
    peaks = hardware.known_peaks("TPU v3")
    assert peaks.bf16_flops == pytest.approx(123 * TERA / 2)
    assert peaks.bandwidth == pytest.approx(900e9 / 2)


def test_every_device_kind_names_a_table_entry():
    assert set(hardware.DEVICE_KINDS.values()) <= set(hardware.KNOWN_DEVICES)
    assert all(kind == hardware.normalize_kind(kind) for kind in hardware.DEVICE_KINDS)


def test_an_unknown_accelerator_is_measured_after_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path))
    monkeypatch.delenv("ARCHSCALE_PEAK_FLOPS", raising=False)
    monkeypatch.delenv("ARCHSCALE_MEMORY_BANDWIDTH", raising=False)
    monkeypatch.setattr(hardware, "device_kind", lambda: "NVIDIA RTX PRO 6000 Blackwell")
    monkeypatch.setattr(hardware.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(hardware, "probe_matmul_flops", lambda dtype: 3e14)
    monkeypatch.setattr(hardware, "probe_bandwidth", lambda: 1.5e12)
    hardware._warn_unknown.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hardware.peak_flops("bfloat16") == 3e14
        assert hardware.peak_flops("bfloat16") == 3e14
        assert hardware.memory_bandwidth() == 1.5e12
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "RTX PRO 6000" in messages[0], messages
    assert (tmp_path / "hardware.json").is_file()


def test_probes_are_cached_where_the_tests_point_archscale_cache():
    """conftest.py points $ARCHSCALE_CACHE away from the user's cache; the probes follow it."""
    assert hardware.cache_path() == Path(os.environ["ARCHSCALE_CACHE"]) / "hardware.json"
    assert hardware.cache_path().parent != Path.home() / ".cache" / "archscale"
