#!/usr/bin/env bash
# Runs on the lent GPU machine (the device tool), in the repository's copy there: takes the
# payload parts this call and earlier ones carried (.gpu/parts/, built here by
# scripts/device_gpu_payload.sh) into $GP, and with every part there unpacks them and measures
# ASR streams, BlazeFace frames/s and LLM tokens/s on ONNX Runtime's CUDA provider
# (python -m tidegate.bench.micro.gpu), one part at a time, each with its own time limit, the
# JSON reports and logs into $OUT. `--collect` only takes this call's parts.
set -u
GP=${GP:-/root/gp}
mkdir -p "$GP"
if [ -d .gpu/parts ]; then mv .gpu/parts/* "$GP"/ 2>/dev/null; fi
ls -l "$GP"
[ "${1:-}" = "--collect" ] && exit 0
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ ! -d "$GP/site/onnxruntime" ]; then
  for a in a b; do  # b (the LLM's package) may be left out when no LLM is measured
    [ -e "$GP/$a.0" ] || continue
    cat "$GP/$a".* | python3 -c \
      'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)' |
      tar -xf - -C "$GP" || { echo "unpacking $a failed"; exit 3; }
  done
fi
# the CUDA 13 libraries the CUDA provider links (cuBLAS, cuRAND, cudart, cuFFT, cuDNN, NVRTC)
libs=$(python3 - <<'EOF'
import glob, os, site
names = ("libcublas.so.", "libcublasLt.so.", "libcurand.so.", "libcufft.so.", "libcudart.so.",
         "libcudnn.so.", "libnvrtc.so.")
dirs = {os.path.dirname(f) for sp in site.getsitepackages()
        for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so.*"), recursive=True)
        if os.path.basename(f).startswith(names)}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$GP/site:$PWD" PYTHONUNBUFFERED=1 TIDEGATE_DATA_DIR="$GP/data"
nvidia-smi -L
python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
bench() {  # a limit in seconds, a name, then the bench's arguments
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s) $(date -u +%T)"
  timeout "$limit" python3 -m tidegate.bench.micro.gpu --provider cuda --data-dir "$GP/data" \
    --assets "$GP/assets" --out "$OUT" "$@" 2>&1 | tee "$OUT/$name.log"
}
run=" ${RUN:-vision asr asr-fp32 llm llm-fp32} "  # which measurements, in this order
for m in $run; do
  case $m in
    vision) bench "${T_VISION:-80}" vision --parts vision ;;
    asr) bench "${T_ASR:-230}" asr --parts asr --asr-duration-s 10 ;;
    asr-fp32) bench "${T_ASR_FP32:-230}" asr-fp32 --parts asr --asr-duration-s 10 \
      --asr-model whisper-tiny-en-fp32 ;;
    profile)
      echo "== profile (limit ${T_PROFILE:-150}s) $(date -u +%T)"
      timeout "${T_PROFILE:-150}" python3 scripts/device_asr_profile.py "$GP/assets" cuda 2>&1 |
        tee "$OUT/profile.log" ;;
    llm) bench "${T_LLM:-110}" llm --parts llm ;;
    llm-fp32) bench "${T_LLM_FP32:-120}" llm-fp32 --parts llm --llm-model smollm2-135m-fp32 ;;
    *) echo "unknown measurement $m" ;;
  esac
done
echo "== done $(date -u +%T)"
