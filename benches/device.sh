#!/usr/bin/env bash
# Device check (issue 8 item 6): on a machine with a real GPU, with binaries built
# elsewhere (it builds nothing), run `spark-wgpu devices`, the conv bench and `bench` for
# SparK-ResNet-50 224² at batch 8 and 32, and write everything to one folder.
#
#   cargo build --release --benches            # on the build machine
#   benches/device.sh [OUT_DIR]                # on the GPU machine, from the repo root
#
# Binaries: target/release/spark-wgpu and the newest target/release/deps/conv-* (the conv
# bench's executable); override with SPARK_WGPU_BIN / SPARK_CONV_BENCH. Extra options for
# every run (e.g. `--backend vulkan --adapter NVIDIA`) come from SPARK_DEVICE_ARGS. Each
# step's exit status is kept in OUT_DIR/status.txt and a failed step does not stop the
# others, so one call returns every number it could get. SPARK_DEVICE_SMOKE=1 runs the same
# steps on a tiny model and no conv bench, to check the script itself on lavapipe.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-device-results}
mkdir -p "$out"
bin=${SPARK_WGPU_BIN:-target/release/spark-wgpu}
conv=${SPARK_CONV_BENCH:-$(ls -t target/release/deps/conv-* 2>/dev/null | grep -v '\.d$' | head -1)}
model=resnet50 size=224 dec=768 batches="8 32"
[ "${SPARK_DEVICE_SMOKE:-0}" = 1 ] && model=resnet_tiny size=64 dec=64 batches="2 4" conv=
read -r -a extra <<<"${SPARK_DEVICE_ARGS:-}"
# A cold kernel cache inside the results: the first bench's build time is the tuner's
# cold cost (its JSON: tune.spent_s, tune.choices), the warm rerun below the cached one.
export SPARK_WGPU_CACHE_DIR="$out/kernel-cache"
rm -rf "$SPARK_WGPU_CACHE_DIR"
: >"$out/status.txt"
step() { # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/status.txt"
  local t0=$SECONDS
  "$@" >"$out/$name.out" 2>"$out/$name.err"
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$out/status.txt"
}
[ -x "$bin" ] || { echo "no $bin: build it first (cargo build --release --benches)" >&2; exit 1; }
{ date -u; uname -a; nvidia-smi -L 2>/dev/null; } >"$out/machine.txt"
step devices "$bin" "${extra[@]}" devices
if [ -n "$conv" ] && [ -x "$conv" ]; then
  # The conv bench's adapter choice follows the same environment variables.
  # Every candidate of each layer (GPU family: register 4x8 and the staged block tiles).
  step conv "$conv" --bench
else
  echo "== conv: no conv bench executable (cargo build --release --benches)" | tee -a "$out/status.txt"
fi
for b in $batches; do
  m=(bench --model "$model" --input-size "$size" --batch "$b" --dec-width "$dec" --json)
  step "bench_${model}_${size}_b$b" "$bin" "${extra[@]}" "${m[@]}" --steps 5 --warmup 2
  step "bench_${model}_${size}_b${b}_dense" "$bin" "${extra[@]}" "${m[@]}" --steps 3 --warmup 1 --dense-encoder --no-profile
done
b=${batches%% *}
step "bench_${model}_${size}_b${b}_warm_cache" "$bin" "${extra[@]}" bench --model "$model" --input-size "$size" --batch "$b" \
  --dec-width "$dec" --json --steps 1 --warmup 1 --no-profile
step "bench_${model}_${size}_b${b}_tune_off" "$bin" "${extra[@]}" bench --model "$model" --input-size "$size" --batch "$b" \
  --dec-width "$dec" --json --steps 5 --warmup 2 --no-profile --tune off
# The last stdout line of each bench is its JSON object.
for f in "$out"/bench_*.out; do tail -n 1 "$f"; done >"$out/bench.jsonl"
echo "results in $out/ (status.txt, bench.jsonl, *.out, *.err)"
