"""The naive peer: FastAPI + transformers + torch eager, one text per call, no batching.

What a first version of a classification API often is. It serves the trained run (the torch
weights the ONNX files were exported from): `SMALLCLS_NAIVE_RUN=runs/minilm uvicorn
bench.naive_server:app`. Not part of the service; bench/peers.py starts it.
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from training.run_dir import load_run

torch.set_num_threads(int(os.environ.get("SMALLCLS_NAIVE_THREADS", "2")))
model, tokenizer, config, labels = load_run(os.environ["SMALLCLS_NAIVE_RUN"])
max_length = config.max_length
app = FastAPI()


class Body(BaseModel):
    texts: list[str]


@app.post("/classify")
def classify(body: Body) -> dict:
    # Sync endpoint: FastAPI runs it in its thread pool, one text per forward pass.
    predictions = []
    for text in body.texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = model(enc["input_ids"], enc["attention_mask"])["logits"][0]
        probs = torch.softmax(logits, -1).tolist()
        predictions.append(
            {"label": labels[int(logits.argmax())], "scores": dict(zip(labels, probs, strict=True))}
        )
    return {"model": "naive", "predictions": predictions}


@app.get("/readyz")
def readyz() -> dict:
    return {"ok": True}
