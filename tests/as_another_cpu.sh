#!/usr/bin/env bash
# Run the numerically sensitive tests (marker `numerics`) again, as another machine's arithmetic would run them.
#
# Float32 results depend on which kernels run: ATen and Inductor pick theirs by instruction set
# (ATEN_CPU_CAPABILITY), oneDNN and MKL by their own probes (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), and
# sums split over threads come out in another order (OMP_NUM_THREADS). This pass takes one level below the
# instruction set in use (AVX-512 -> AVX2, AVX2 or others -> the portable default kernels, the portable kernels ->
# the machine's own) and another thread count
# (1, or 2 when the first pass had 1), so a test that only holds for this machine's arithmetic fails here and not
# on a user's machine. (Inductor's compiled kernels are cached per instruction set: lwtakit.fast_path.compile_per_isa.)
#
#   bash tests/as_another_cpu.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
read -r isa threads < <("$python" -c "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())")
case "$isa" in
  AVX512*) aten=avx2 onednn=AVX2 mkl=AVX2 ;;
  DEFAULT) aten="" ;;  # the first pass ran the portable kernels: this one runs the machine's own
  *) aten=default onednn=SSE41 mkl=SSE4_2 ;;
esac
[ "$threads" -gt 1 ] && n=1 || n=2
if [ -n "$aten" ]; then
  export ATEN_CPU_CAPABILITY=$aten ONEDNN_MAX_CPU_ISA=$onednn MKL_ENABLE_INSTRUCTIONS=$mkl
else
  unset ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS
fi
export OMP_NUM_THREADS=$n
echo "+ as another CPU: kernels ${aten:-native} (first pass: $isa), OMP_NUM_THREADS=$n (first pass: $threads threads)"
exec "$python" -m pytest -q -p no:cacheprovider -m "numerics and not slow and not gpu" "$@"
