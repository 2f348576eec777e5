"""The Triton python-backend model ``FOLDER.transcribe``: Whisper's whole decode of a batch on
the server (encoder, then the greedy decoder with its KV cache, ONNX Runtime inside, CUDA when
the instance is on a GPU). ``tidegate models export-triton`` writes this file as
``FOLDER.transcribe/1/model.py`` with :mod:`.greedy` and :mod:`.features` beside it, and the
model's ONNX files, tokenizer and config in the same folder.

Triton's dynamic batcher hands ``execute`` the requests of several session nodes (each a batch
of rows); they are decoded together in one :meth:`.greedy.Transcriber.infer` call. Needs
numpy and onnxruntime (``onnxruntime-gpu`` on a GPU node) in the python backend's environment.
Not importable outside Triton (``triton_python_backend_utils``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import triton_python_backend_utils as pb_utils  # noqa: E402
from greedy import TRANSCRIBE_INPUTS, Transcriber  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads", "1"))
        if args.get("model_instance_kind") == "GPU":
            device = int(args.get("model_instance_device_id", 0))
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": device}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self.model = Transcriber.open_ort(Path(HERE), providers, threads)

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = []
        for request in requests:
            feed = {}
            for name, _, _ in TRANSCRIBE_INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy()
            feeds.append(feed)
        responses = []
        for answer in self.model.infer(feeds):
            if isinstance(answer, ValueError):
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(answer)))
                )
            else:
                tensors = [pb_utils.Tensor(k, v) for k, v in answer.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.model = None
