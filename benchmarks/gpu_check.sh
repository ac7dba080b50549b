#!/usr/bin/env bash
# For whoever has a GPU at hand (with a CUDA build of torch installed): the CUDA tests, then the
# three benchmarks on CUDA. About 5 minutes on one GPU. Paste its output into your notes.
#     bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check: no CUDA device visible to torch"
print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name()}")
PY
echo "== CUDA tests (tasks, models, baselines, theory, precisions, Ray on GPUs)"
python -m pytest -q -rs -k cuda tests
cd benchmarks
echo "== Ahn et al. train step"
python bench_ahn_train_step.py --device cuda
echo "== Cheng et al. train step"
python bench_cheng_train_step.py --device cuda
echo "== Zheng et al. full-batch epoch"
python bench_zheng_epoch.py --device cuda
