"""Decode throughput against the memory-bandwidth roofline, and the stability of throughput ratios.

    python tests/bench/bench_decode.py [--repeats 3] [--stability-seconds 5] [--skip-stability] [--skip-roofline]

1. Decode tokens/s at batch 32, context 512 of d_model 512, 4 layers (8 heads of 64, no GQA,
   fp32 on CPU) through ``measure_throughput``, against the roofline of a decode step that reads
   the weights (N and the output projection) plus the KV cache at its mean length once, at the
   read bandwidth of ``hardware.probe_bandwidth``, on the platform's serving backend (printed:
   ``cpu-kernels`` where the native kernels build, else ``cpu-xla``; ARCHSCALE_CPU_KERNELS=0
   forces ``cpu-xla``). The probe runs here, beside the measurement
   (best of one probe before and one after), because other processes sharing the cores slow
   both alike; the cached figure the library uses is printed too. Target: >= 50% of roofline.
2. Ratio stability: laws compare shapes by throughput ratios, so the decode tokens/s ratio of
   two shapes (GQA 4 vs none, the default CPU setting) is measured twice, each time by
   ``compare_throughput`` (the two shapes' calls interleaved for --stability-seconds each, the
   ratio the median of per-round ratios); the two ratios must agree within 10%. The ratio of
   the fastest calls, which is what two separate measurements would give, is printed beside.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp

from archscale.arch import ArchSpec
from archscale.arch.runtime import configure_jax
from archscale.cli.entry import tune_allocator
from archscale.sweeps import hardware
from archscale.sweeps.throughput import compare_throughput, measure_throughput

SPEC = ArchSpec(vocab_size=256, seq_len=512, n_layers=4, d_model=512, n_heads=8, n_kv_heads=8,
                head_dim=64, d_ff=1536)
BATCH, CONTEXT, DECODE_TOKENS = 32, 512, 32
PAIR = (ArchSpec(vocab_size=256, seq_len=256, n_layers=4, d_model=256, n_heads=8, n_kv_heads=8,
                 head_dim=32, d_ff=768),
        ArchSpec(vocab_size=256, seq_len=256, n_layers=4, d_model=256, n_heads=8, n_kv_heads=2,
                 head_dim=32, d_ff=768))


def roofline_check(repeats: int) -> None:
    before = hardware.probe_bandwidth()
    result = measure_throughput(SPEC, batch=BATCH, context=CONTEXT, decode_tokens=DECODE_TOKENS,
                                repeats=repeats, dtype=jnp.float32)
    bandwidth = max(before, hardware.probe_bandwidth())
    peak = hardware.probe_matmul_flops("float32")
    step_bytes = result.decode_bytes_per_step
    mean_context = CONTEXT + DECODE_TOKENS // 2
    step_flops = BATCH * SPEC.inference_flops_per_token(mean_context, include_lm_head=True)
    roofline = BATCH * bandwidth / step_bytes
    print(f"decode d={SPEC.d_model} L={SPEC.n_layers} heads {SPEC.n_heads}/{SPEC.n_kv_heads} "
          f"batch {BATCH} context {CONTEXT} (+{DECODE_TOKENS}) fp32 on {result.device_kind}, "
          f"backend {result.backend}")
    print(f"  per step: {step_bytes / 1e6:.1f} MB read (weights "
          f"{SPEC.decode_weight_bytes('float32') / 1e6:.1f} MB + KV cache "
          f"{SPEC.kv_cache_bytes(BATCH, mean_context, 'float32') / 1e6:.1f} MB), "
          f"{step_flops / 1e9:.2f} GFLOP")
    print(f"  bandwidth measured now {bandwidth / 1e9:.1f} GB/s (cached figure "
          f"{hardware.memory_bandwidth() / 1e9:.1f} GB/s); matmul peak now {peak / 1e9:.0f} "
          f"GFLOP/s")
    print(f"  memory time {step_bytes / bandwidth * 1e3:.1f} ms/step, compute time "
          f"{step_flops / peak * 1e3:.1f} ms/step at those rates")
    print(f"  measured {result.decode_tokens_per_s:,.0f} tok/s "
          f"({BATCH / result.decode_tokens_per_s * 1e3:.1f} ms/step) vs roofline "
          f"{roofline:,.0f} tok/s: {result.decode_tokens_per_s / roofline:.1%} (target >= 50%)")
    print(f"  median of {result.decode_calls} calls {result.decode_tokens_per_s_median:,.0f} tok/s: "
          f"{result.decode_tokens_per_s_median / roofline:.1%} of the roofline")
    print(f"  prefill {result.prefill_tokens_per_s:,.0f} tok/s "
          f"({result.prefill_fraction:.1%} of its roofline at the cached peaks)")


def stability_check(repeats: int, min_seconds: float) -> None:
    configure_jax()  # the persistent compilation cache: repeated shapes compile once
    ratios = []
    for run in (1, 2):
        comparison = compare_throughput(PAIR, repeats=repeats, min_seconds=min_seconds)
        mha, gqa = (r.decode_tokens_per_s for r in comparison.results)
        ratios.append(comparison.decode_ratios[1])
        print(f"  run {run}: GQA-4 / MHA = {ratios[-1]:.3f} (median of "
              f"{comparison.results[0].decode_calls} paired rounds); fastest calls GQA-4 "
              f"{gqa:,.0f} tok/s / MHA {mha:,.0f} tok/s = {gqa / mha:.3f}")
    difference = abs(ratios[0] - ratios[1]) / (sum(ratios) / 2)
    print(f"ratio stability: {ratios[0]:.3f} vs {ratios[1]:.3f}, relative difference "
          f"{difference:.1%} (must be within 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stability-seconds", type=float, default=5.0,
                        help="each shape's decode timed for at least this long per comparison")
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--skip-roofline", action="store_true")
    args = parser.parse_args()
    if not args.skip_roofline:
        roofline_check(args.repeats)
    if not args.skip_stability:
        print(f"stability: d={PAIR[0].d_model} L={PAIR[0].n_layers} at the default CPU setting")
        stability_check(max(args.repeats, 10), args.stability_seconds)


if __name__ == "__main__":
    tune_allocator()  # huge-page-backed malloc, as the `archscale` command runs with
    main()
