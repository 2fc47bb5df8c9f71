#!/usr/bin/env bash
# The device check of the CUDA path, for a session with a lent GPU machine. Run it in the repository root with the
# repository's venv carried (.venv); it installs nothing and reaches no network.
#   bash benchmarks/gpu_check.sh   # gpu.json to benchmarks/results/, logs to /tmp/fedsqueeze-gpu-check/
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # everything under $OUT
# It runs the CUDA tests (tests/test_cuda_path.py and the Ferret CPU/CUDA identity tests) and benchmarks/gpu.py,
# and writes pytest's log, nvidia-smi's view and gpu.json. The CPU-only torch wheel of CI cannot see a GPU: the
# interpreter must have a CUDA build of torch (and the project's other dependencies), or the CUDA tests skip and
# gpu.json says "cuda": null. PYTHON=/path/to/python picks another interpreter than .venv/bin/python;
# GPU_CHECK_QUICK=1 runs the benchmark with --quick.
set -u -o pipefail
cd "$(dirname "$0")/.."
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
dest="${OUT:-${TMPDIR:-/tmp}/fedsqueeze-gpu-check}"
json="${OUT:-benchmarks/results}/gpu.json"
mkdir -p "$dest" "$(dirname "$json")"
python="${PYTHON:-.venv/bin/python}"
status=0

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi unavailable"; } \
    > "$dest/gpu_check_nvidia_smi.txt" 2>&1
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
torch.cuda.is_available())' | tee "$dest/gpu_check_torch.txt"

"$python" -m pytest tests/test_cuda_path.py tests/test_random_basis.py tests/test_ferret_codec.py -q -rs \
    2>&1 | tee "$dest/gpu_check_pytest.txt" || status=1

timeout 420 "$python" benchmarks/gpu.py ${GPU_CHECK_QUICK:+--quick} --out "$json" \
    > "$dest/gpu_check_benchmark.log" 2>&1 || status=1
tail -n 5 "$dest/gpu_check_benchmark.log"
echo "gpu_check: logs in $dest, figures in $json (status $status)"
exit "$status"
