#!/usr/bin/env bash
# The accelerator check of issue 14, one line per figure, at most ~8 minutes on one H200:
#   1. bf16 training MFU of a ~150M-parameter shape, against the card's bf16 peak;
#   2. decode tokens/s against the HBM roofline at batch 64, context 2048;
#   3. a 2-worker study sharing the one GPU (disjoint memory caps, preallocation off).
# Needs `archscale` on PATH in an environment whose JAX sees the GPU (e.g. pip install -e . and
# pip install 'jax[cuda12]'). Run from the repository root:  bash tests/bench/device_check.sh
# Each step has its own time limit, so one hung step does not eat the others' time.
set -u
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
here=$(pwd)
fail=0

python - <<'PY' || { echo "FAIL 0: JAX sees no accelerator"; exit 1; }
import jax
devices = jax.devices()
print(f"ok   0: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
assert jax.default_backend() != "cpu"
PY

# 1. ~152M non-embedding parameters: d 1024, 10 layers, 16 heads / 4 KV heads, d_ff 4096.
if timeout 240 archscale train --d-model 1024 --layers 10 --heads 16 --kv-heads 4 --d-ff 4096 \
      --vocab 32768 --seq-len 2048 --batch-size 32 --tokens 3e7 --no-throughput --no-progress \
      --out "$out/train.json" >"$out/train.log" 2>&1; then
  python - "$out/train.json" <<'PY' || fail=1
import json, sys
r = json.load(open(sys.argv[1]))
print(f"ok   1: bf16 training, N={r['params_nonembed']:,}: {r['tokens_per_s']:,.0f} tokens/s, "
      f"MFU {r['mfu']:.1%} of the {r['device_kind']} bf16 peak (compile {r['compile_time_s']:.0f} s)")
PY
else echo "FAIL 1: training did not finish: $(tail -1 "$out/train.log")"; fail=1; fi

# 2. Decode of the same shape at batch 64, context 2048, against the HBM roofline.
if timeout 150 archscale bench throughput --d-model 1024 --layers 10 --heads 16 --kv-heads 4 \
      --d-ff 4096 --vocab 32768 --batch 64 --context 2048 --decode-tokens 64 --dtype bf16 \
      --out "$out/decode.json" >"$out/decode.log" 2>&1; then
  python - "$out/decode.json" <<'PY' || fail=1
import json, sys
r = json.load(open(sys.argv[1]))
print(f"ok   2: decode at batch 64, context 2048: {r['decode_tokens_per_s']:,.0f} tokens/s = "
      f"{r['decode_fraction']:.1%} of the {r['decode_bound']}-bound roofline "
      f"({r['memory_bandwidth'] / 1e12:.2f} TB/s), backend {r['backend']}; prefill "
      f"{r['prefill_fraction']:.1%} of its roofline")
PY
else echo "FAIL 2: decode benchmark did not finish: $(tail -1 "$out/decode.log")"; fail=1; fi

# 3. Two workers on one GPU: each capped at 0.45 of its memory, preallocation off.
cd "$out" && rm -f check.journal
if timeout 120 archscale study create "$here/search/examples/tiny_grid.yaml" --storage check.journal \
      >study.log 2>&1 && timeout 120 archscale study run tiny-grid --storage check.journal \
      --workers 2 --no-progress >>study.log 2>&1; then
  python - <<'PY' || fail=1
import optuna
study = optuna.load_study(study_name="tiny-grid", storage=optuna.storages.JournalStorage(
    optuna.storages.journal.JournalFileBackend("check.journal")))
states = [t.state.name for t in study.trials]
done = states.count("COMPLETE")
print(f"ok   3: 2 workers on one GPU: {done}/{len(states)} runs complete, "
      f"{len(states) - done} failed or waiting")
assert done == len(states)
PY
else echo "FAIL 3: the 2-worker study failed: $(grep -m1 -iE 'error|memory' study.log)"; fail=1; fi
exit $fail
