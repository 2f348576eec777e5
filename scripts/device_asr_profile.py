"""Where a batched Whisper decode spends its time on a GPU provider: one batch of B rows
(real speech, 2-4 s each, as the GPU bench's partials and finals are), timed as encoder,
decoder calls and the host work between them (log-softmax, gathers, feeds), with the
cross-attention keys and values resident on the device (OnnxModel.resident) and without.
Run by scripts/device_gpu_bench.sh (RUN=profile) after the models are prepared; prints one
JSON line per case and writes them to $OUT/asr-profile.json."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tidegate.bench.micro.gpu import read_speech
from tidegate.engines.asr.request import AsrRequest
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.runtime import RuntimeOptions
from tidegate.tools.prepare import prepare_offline


def main() -> int:
    data = Path(os.environ["TIDEGATE_DATA_DIR"])
    assets = Path(sys.argv[1])
    provider = sys.argv[2] if len(sys.argv) > 2 else "cuda"
    speech = read_speech(assets)
    out = []
    for model in ("whisper-tiny-en-fp32", "whisper-tiny-en"):
        prepare_offline(data, model)
        engine = WhisperOnnx(
            data / "models" / model,
            runtime=RuntimeOptions(providers=(provider,), require_first=True),
        )
        engine.load()
        decoder = engine._decoder
        assert decoder is not None
        plain_run = decoder.run
        calls = {"n": 0, "s": 0.0}

        def timed(feeds, plain_run=plain_run, calls=calls):
            t = time.perf_counter()
            got = plain_run(feeds)
            calls["s"] += time.perf_counter() - t
            calls["n"] += 1
            return got

        decoder.run = timed  # type: ignore[method-assign]
        resident_fn = decoder.resident
        for batch in (1, 4, 16, 32):
            reqs = [
                AsrRequest(speech[i * 24_000 : i * 24_000 + 32_000 + 8_000 * (i % 3)])
                for i in range(batch)
            ]
            for resident in (True, False):
                decoder.resident = resident_fn if resident else (lambda a: a)  # type: ignore[method-assign]
                engine.run_batch(reqs, [None] * batch)  # warm-up
                rows = []
                for _ in range(3):
                    calls["n"], calls["s"] = 0, 0.0
                    t0 = time.perf_counter()
                    got = engine.run_batch(reqs, [None] * batch)
                    total = (time.perf_counter() - t0) * 1000
                    tm = got[0].value.timings_ms
                    rows.append(
                        {
                            "total_ms": total,
                            "encode_ms": tm["encode"],
                            "decode_ms": tm["decode"],
                            "decoder_calls": calls["n"],
                            "decoder_calls_ms": calls["s"] * 1000,
                            "host_between_ms": tm["decode"] - calls["s"] * 1000,
                        }
                    )
                best = min(rows, key=lambda r: r["total_ms"])
                case = {
                    "model": model,
                    "provider": engine.provider,
                    "batch": batch,
                    "resident_cross": resident,
                    **{k: round(v, 1) for k, v in best.items()},
                }
                print(json.dumps(case), flush=True)
                out.append(case)
        engine.close()
    dest = Path(os.environ.get("OUT", "/tmp")) / "asr-profile.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
