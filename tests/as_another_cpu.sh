#!/usr/bin/env bash
# Run the numerically sensitive tests (marker `numerics`) again, as another machine's arithmetic would run them.
#
# Float32 results depend on which kernels run: ATen and Inductor pick theirs by instruction set
# (ATEN_CPU_CAPABILITY), oneDNN and MKL by their own probes (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), and
# sums split over threads come out in another order (OMP_NUM_THREADS). This pass takes one level below the
# instruction set in use (AVX-512 -> AVX2, anything else -> the portable default kernels) and another thread count
# (1, or 2 when the first pass had 1), so a test that only holds for this machine's arithmetic fails here and not
# on a user's machine. Inductor's compiled kernels get a cache of their own: a kernel built for one instruction set
# must not be loaded by a process that runs another.
#
#   bash tests/as_another_cpu.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
read -r isa threads < <("$python" -c "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())")
case "$isa" in
  AVX512*) aten=avx2 onednn=AVX2 mkl=AVX2 ;;
  *) aten=default onednn=SSE41 mkl=SSE4_2 ;;
esac
[ "$threads" -gt 1 ] && n=1 || n=2
export ATEN_CPU_CAPABILITY=$aten ONEDNN_MAX_CPU_ISA=$onednn MKL_ENABLE_INSTRUCTIONS=$mkl OMP_NUM_THREADS=$n
export TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/lwtakit-inductor-$aten-$(id -u)"
echo "+ as another CPU: ATEN_CPU_CAPABILITY=$aten (was $isa) ONEDNN_MAX_CPU_ISA=$onednn MKL_ENABLE_INSTRUCTIONS=$mkl OMP_NUM_THREADS=$n (was $threads)"
exec "$python" -m pytest -q -p no:cacheprovider -m "numerics and not slow and not gpu" "$@"
