#!/usr/bin/env bash
# What a lent CUDA machine runs (it has PyTorch, not Ray): the throughput bench on the GPU, then a
# same-budget comparison on the whole Fashion-MNIST training split through boostray's Ray-free path
# (--workers 0 --gpu). Fashion-MNIST's IDX files: $FMNIST_DIR, else .devdata/fashion-mnist (ignored by git:
# a copy carried to a machine without the Debian package), else the Debian package's folder.
#   bash bench/device_check.sh [throughput|compare|all]   (results into $OUT, else bench/results/cuda)
# On an H200: throughput about 4.5 min with the variants; compare about 40 s a run, 9 runs.
set -u
what=${1:-all}
out=${OUT:-bench/results/cuda}
mkdir -p "$out"
data=${FMNIST_DIR:-.devdata/fashion-mnist}
[ -d "$data" ] || data=/usr/share/datasets/fashion-mnist
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} XDG_CACHE_HOME=/tmp/cache
python3 -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
if [ "$what" = throughput ] || [ "$what" = all ]; then
    timeout "${THROUGHPUT_TIMEOUT:-330}" python3 bench/bench_throughput.py --device cuda --repeat 3 \
        --data-dir "$data" --fashion-mnist-subset 0 ${THROUGHPUT_ARGS:-} --json-out "$out/throughput-cuda.json" \
        > "$out/throughput-cuda.log" 2>&1
    echo "throughput rc=$?"; tail -n 3 "$out/throughput-cuda.log"
fi
if [ "$what" = compare ] || [ "$what" = all ]; then
    timeout "${COMPARE_TIMEOUT:-600}" python3 -m boostray compare --workers 0 --gpu --dataset fashion-mnist \
        --data-dir "$data" --members 4 --epochs "${COMPARE_EPOCHS:-12}" --seeds 3 \
        --methods single,checkpoint,cbnn ${COMPARE_EXTRA:-} --report /tmp/boostray-compare > "$out/compare.log" 2>&1
    echo "compare rc=$?"; tail -n 30 "$out/compare.log"
    # the device returns a few files: the tables, and the report without its runs' models in one archive
    cp /tmp/boostray-compare/results.md /tmp/boostray-compare/results.csv "$out/" 2>/dev/null
    tar czf "$out/compare-report.tgz" --exclude=runs -C /tmp boostray-compare
fi
