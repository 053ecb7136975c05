"""The baseline `serve_footprint.py` compares against: the same checkpoint served by torch + transformers.

Same HTTP stack (FastAPI + uvicorn), same request shape, one intra-op thread; the model is the FP32 checkpoint the
bundle was exported from, loaded with transformers' BertModel and tokenised with transformers' fast tokenizer.

    .venv/bin/python benchmarks/serve_torch_baseline.py CHECKPOINT PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from transformers import PreTrainedTokenizerFast

from edgeslm.models import load_checkpoint


def main() -> None:
    checkpoint, port = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    ckpt = load_checkpoint(checkpoint)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))
    app = FastAPI()

    @app.post("/")
    def infer(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
        texts = [body["inputs"]] if isinstance(body["inputs"], str) else body["inputs"]
        feed = tokenizer(texts, padding=True, truncation=True, max_length=ckpt.max_length, return_tensors="pt")
        with torch.no_grad():
            types = feed.get("token_type_ids", torch.zeros_like(feed["input_ids"]))
            probs = ckpt.model(feed["input_ids"], feed["attention_mask"], types).softmax(-1)
        return [
            sorted(
                ({"label": lb, "score": float(s)} for lb, s in zip(ckpt.labels, p, strict=True)),
                key=lambda x: -x["score"],
            )
            for p in probs
        ]

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
