"""The card (README.md) of a run's `model/` folder: what the files are and how to load them.

The folder is a Hugging Face directory of the trained backbone plus our head in its own file;
the card says which loader gives what, because the obvious one for a classifier
(`AutoModelForSequenceClassification`) would build a different, random head.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from training.families import ModelSpec
from training.pretrained import KNOWN

# "org/name" as the Hub spells model ids; a local path never matches (it has no single slash
# between two plain names, or it exists on disk).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_POOLING = {
    "mean_pool": "the mean of the last hidden states over non-pad tokens, then `head.weight` "
    "(labels x hidden) and `head.bias`",
    "last_token": "the last non-pad token's hidden state (right padding), then `head.weight` "
    "(labels x hidden) and `head.bias`",
    "label_words": "the last non-pad token's hidden state (right padding) times `label_words` "
    "(labels x hidden): each label word's row of the LM's output embedding, fine-tuned",
}


def hub_model_id(base_model: str) -> str | None:
    """The Hub id of a base model named in a config, if it has one (for card metadata)."""
    known = KNOWN.get(base_model)
    if known:
        return known.split()[0]
    if _HUB_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _loader(model_type: str) -> str:
    return "T5EncoderModel" if model_type in ("t5", "mt5") else "AutoModel"


def write_run_card(
    model_dir: Path,
    spec: ModelSpec,
    labels: list[str],
    *,
    base_model: str,
    head_keys: list[str],
    model_type: str = "",
) -> Path:
    """Write `model_dir/README.md`."""
    data = ModelCardData(
        library_name="transformers",
        base_model=hub_model_id(base_model),
        tags=["smallcls", "text-classification", spec.family],
    )
    loader = _loader(model_type)
    mask_note = ""
    if spec.family == "extracted_encoder" and model_type not in ("t5", "mt5"):
        mask_note = (
            "\nThis backbone is a decoder-only LM trained to attend both ways: smallcls passes "
            "it a 4-D mask that is bidirectional and masks padding "
            "(`training/families.py`, `decoder_mask`). Loaded plainly it attends causally, "
            "so its states differ from those the head was trained on.\n"
        )
    layers = f", cut to its first {spec.layers} layers" if spec.layers else ""
    body = f"""
# Trained backbone of a smallcls run

The `model/` folder of a smallcls training run: a classifier of family `{spec.family}` with
the head `{spec.head}`{layers}, on the base model `{base_model}`, for the labels
{", ".join(f"`{label}`" for label in labels)} ({spec.problem_type.replace("_", "-")}).

| file | what |
|---|---|
| `config.json`, `model.safetensors` | the trained backbone as transformers saves it |
| `{"`, `".join(head_keys)}` in `head.safetensors` | the head: {_POOLING[spec.head]} |
| `spec.json` | family, head, layers kept, problem type |
| `labels.json` | logit i is `labels[i]` |
| tokenizer files | the tokenizer the run trained with |

## Loading

```python
from transformers import {loader}, AutoTokenizer
from safetensors.torch import load_file

backbone = {loader}.from_pretrained("path/to/run/model")   # the trained weights
tokenizer = AutoTokenizer.from_pretrained("path/to/run/model")
head = load_file("path/to/run/model/head.safetensors")       # {head_keys}
```
{mask_note}
The whole classifier (backbone, pooling and head) is `training.run_dir.load_run(run_dir)`.
`AutoModelForSequenceClassification` does not rebuild it: it adds its own head (for BERT,
a pooler over the first token), randomly initialised. To serve the model, export it with
`smallcls export <run>`: the model directories it writes load with optimum and
`transformers.pipeline` and have their own card.
"""
    path = model_dir / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(path)
    return path
