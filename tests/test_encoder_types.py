"""Any Hugging Face encoder works: bidirectional, padding masked, ONNX parity; the rest refused.

The attention mask a backbone gets is decided from its config (`attention_kind`). These tiny
random configs (hidden 32, 2 layers) cover encoders whose forward differs from BERT's: ALBERT
and ELECTRA project a smaller embedding, MPNet and DeBERTa-v2 use relative positions, ModernBERT
alternates global and sliding-window layers; MPNet, ELECTRA and ALBERT once failed on a 4-D
mask, DeBERTa-v2 with a size mismatch (shared/STACK.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from transformers import (  # noqa: E402
    AlbertConfig,
    BartConfig,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    FNetConfig,
    Gemma3Config,
    LlamaConfig,
    ModernBertConfig,
    MPNetConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    T5Config,
    ViTConfig,
    WhisperConfig,
)

from export.onnx_export import export_onnx  # noqa: E402
from tests.tiny_models import _save_tokenizer, _word_piece, sst2_texts  # noqa: E402
from training.families import (  # noqa: E402
    Classifier,
    ModelSpec,
    attention_kind,
    build_classifier,
)

torch.set_num_threads(1)

ENCODER = ModelSpec(family="encoder", head="mean_pool", num_labels=2)
MAX_LENGTH = 64
SIZE = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=128)
TEXTS = ["a gorgeous , witty , seductive movie .", "bad"]
# Longer than the texts `export_onnx` traces with, so a shape baked into the graph shows up.
ONNX_TEXTS = [
    "one",
    "a much longer text than the traced sample , with many more words in it to pad against",
    "not bad at all",
]


def _modernbert(attn: str) -> Callable[[int], PretrainedConfig]:
    # Both "sdpa" (transformers' default on CPU) and "eager" trace with the TorchScript
    # exporter and match torch to ~1e-7 (measured). "flash_attention_2" cannot: it unpads the
    # batch with CUDA-only flash-attn kernels (not installed here, and no CPU path to trace).
    # local_attention=4 < the texts' length, so layer 1's sliding window really cuts.
    return lambda vocab: ModernBertConfig(
        vocab_size=vocab,
        num_attention_heads=4,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
        global_attn_every_n_layers=2,
        local_attention=4,
        attn_implementation=attn,
        **SIZE,
    )


# Special ids follow the "bert" tokenizer: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3.
CONFIGS: dict[str, Callable[[int], PretrainedConfig]] = {
    "bert": lambda v: BertConfig(vocab_size=v, num_attention_heads=2, pad_token_id=0, **SIZE),
    "roberta": lambda v: RobertaConfig(
        vocab_size=v, num_attention_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3, **SIZE
    ),
    "mpnet": lambda v: MPNetConfig(vocab_size=v, num_attention_heads=4, pad_token_id=0, **SIZE),
    # DeBERTa-v3's shape: relative attention both ways, log buckets, no absolute positions.
    "deberta-v2": lambda v: DebertaV2Config(
        vocab_size=v,
        num_attention_heads=4,
        pad_token_id=0,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
        position_biased_input=False,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        **SIZE,
    ),
    "electra": lambda v: ElectraConfig(
        vocab_size=v, embedding_size=16, num_attention_heads=4, pad_token_id=0, **SIZE
    ),
    "albert": lambda v: AlbertConfig(
        vocab_size=v, embedding_size=16, num_attention_heads=4, pad_token_id=0, **SIZE
    ),
    "modernbert-sdpa": _modernbert("sdpa"),
    "modernbert-eager": _modernbert("eager"),
    "distilbert": lambda v: DistilBertConfig(
        vocab_size=v, n_heads=2, pad_token_id=0, hidden_dim=64, **SIZE
    ),
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    tok = _word_piece(sst2_texts(500), "bert")
    return _save_tokenizer(tok, tmp_path_factory.mktemp("tok"), "bert")


def _model(name: str, tokenizer: PreTrainedTokenizerFast) -> Classifier:
    torch.manual_seed(0)
    config = CONFIGS[name](len(tokenizer))
    return build_classifier(config, ENCODER).eval()


def _logits(model: Classifier, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])["logits"]  # (B, L)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kind_is_encoder_and_attention_as_asked(name, tokenizer):
    model = _model(name, tokenizer)
    assert attention_kind(model.backbone.config) == "encoder"
    assert not model.decoder and model.bidirectional
    if name.startswith("modernbert"):
        assert model.backbone.config._attn_implementation == name.split("-")[1]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_first_token_sees_the_last(name, tokenizer):
    """Changing only the LAST real token must move the FIRST token's state."""
    model = _model(name, tokenizer)
    a = tokenizer(["a gorgeous , witty movie"], return_tensors="pt")["input_ids"]  # (1, T)
    b = a.clone()
    b[0, -1] = tokenizer.convert_tokens_to_ids("movie")  # was [SEP]; any other real token
    assert not torch.equal(a, b)
    with torch.no_grad():
        first_a = model.encode(a, torch.ones_like(a))[0, 0]  # (C,)
        first_b = model.encode(b, torch.ones_like(b))[0, 0]
    assert (first_a - first_b).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_padding_is_masked(name, tokenizer):
    model = _model(name, tokenizer)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # really padded
    padded = _logits(model, batch)
    for row, text in enumerate(TEXTS):
        alone = _logits(model, tokenizer([text], return_tensors="pt"))
        torch.testing.assert_close(padded[row : row + 1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_onnx_matches_torch_on_a_padded_batch(name, tokenizer, tmp_path: Path):
    model = _model(name, tokenizer)
    path = tmp_path / "model.onnx"
    export_onnx(model, tokenizer, path, MAX_LENGTH)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]
    assert set(declared) <= {"input_ids", "attention_mask"}  # the server feeds only these
    batch = tokenizer(
        ONNX_TEXTS, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np"
    )
    (onnx_logits,) = session.run(["logits"], {n: batch[n] for n in declared})
    expected = _logits(model, {k: torch.from_numpy(v) for k, v in batch.items()})
    np.testing.assert_allclose(onnx_logits, expected.numpy(), atol=1e-4, rtol=1e-4)


TINY = dict(vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            BartConfig(**TINY, encoder_attention_heads=2, decoder_attention_heads=2),
            "encoder-decoder",
        ),
        (WhisperConfig(**TINY), "encoder-decoder"),
        (ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2), "neither"),
        (Gemma3Config(), "composite"),
        (BertConfig(vocab_size=300, is_decoder=True, **SIZE), "is_decoder"),
    ],
    ids=["bart", "whisper", "vit", "gemma3", "bert-as-decoder"],
)
def test_unsupported_model_types_are_refused_by_config(config, says):
    with pytest.raises(ValueError, match=rf"'{config.model_type}'.*{says}.*what works"):
        build_classifier(config, ENCODER)


def test_backbones_that_cannot_take_our_mask_are_refused_at_build():
    """FNet's forward has no attention mask (padding cannot be masked); OPT computes its
    positions from a 2-D mask, so it fails on a decoder's 4-D one. Both fail at build."""
    fnet = FNetConfig(vocab_size=300, **SIZE)
    with pytest.raises(ValueError, match=r"'fnet'.*takes no attention_mask"):
        build_classifier(fnet, ENCODER)
    opt = OPTConfig(vocab_size=300, ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32)
    opt.update(dict(hidden_size=32, num_hidden_layers=2, max_position_embeddings=128))
    with pytest.raises(ValueError, match=r"'opt'.*4-D additive attention mask"):
        build_classifier(opt, ModelSpec(family="causal_lm", head="last_token", num_labels=2))


def test_family_rules_on_encoders(tokenizer):
    bert = CONFIGS["bert"](len(tokenizer))
    with pytest.raises(ValueError, match="'bert' is a bidirectional encoder"):
        build_classifier(bert, ModelSpec(family="causal_lm", head="last_token", num_labels=2))
    with pytest.raises(ValueError, match="layers applies only"):
        build_classifier(
            bert, ModelSpec(family="extracted_encoder", head="mean_pool", num_labels=2, layers=1)
        )
    # An extracted encoder on an encoder just mean-pools it, bidirectionally.
    torch.manual_seed(0)
    spec = ModelSpec(family="extracted_encoder", head="mean_pool", num_labels=2)
    model = build_classifier(bert, spec).eval()
    assert model.kind == "encoder" and model.bidirectional
    assert _logits(model, tokenizer(TEXTS, padding=True, return_tensors="pt")).shape == (2, 2)


def test_llama_decoder_is_causal_unless_extracted():
    """The decoder path is unchanged: a 4-D mask, causal for causal_lm, bidirectional for
    an extracted encoder (tests/test_families.py covers the rest of it)."""
    config = LlamaConfig(
        vocab_size=300, num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, **SIZE
    )
    assert attention_kind(config) == "decoder"
    assert attention_kind(T5Config(vocab_size=300, d_model=32, num_layers=1)) == "t5_encoder"
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 6, 7, 9]])
    moved = {}
    for family, head in (("extracted_encoder", "mean_pool"), ("causal_lm", "last_token")):
        torch.manual_seed(0)
        spec = ModelSpec(family=family, head=head, num_labels=2)
        model = build_classifier(config, spec).eval()
        with torch.no_grad():
            diff = (
                model.encode(a, torch.ones_like(a))[0, 0]
                - model.encode(b, torch.ones_like(b))[0, 0]
            )
        moved[family] = diff.abs().max().item()
    assert moved["extracted_encoder"] > 1e-3
    assert moved["causal_lm"] == 0
