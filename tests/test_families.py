"""The model families' contract: shapes, padding invariance, bidirectionality, heads."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.families import ModelSpec, build_classifier, decoder_mask  # noqa: E402
from training.tokenize import label_token_ids, load_tokenizer  # noqa: E402

torch.set_num_threads(1)


def _model(source, **spec):
    torch.manual_seed(0)
    return build_classifier(str(source), ModelSpec(num_labels=2, **spec)).eval()


def _hidden(model, ids):
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return model.encode(ids, mask)


@pytest.mark.parametrize(
    ("style", "spec"),
    [
        ("bert", dict(family="encoder", head="mean_pool")),
        ("llama", dict(family="extracted_encoder", head="mean_pool", layers=2)),
        ("t5", dict(family="extracted_encoder", head="mean_pool")),
        ("llama", dict(family="causal_lm", head="last_token")),
    ],
)
def test_padding_does_not_change_logits(tiny_dirs, style, spec):
    model = _model(tiny_dirs[style], **spec)
    tok = load_tokenizer(str(tiny_dirs[style]))
    texts = ["a gorgeous , witty , seductive movie .", "bad"]
    batch = tok(texts, padding=True, return_tensors="pt")
    alone = tok(texts[1:], return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # really padded
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"])["logits"]
        single = model(alone["input_ids"], alone["attention_mask"])["logits"]
    assert padded.shape == (2, 2)
    torch.testing.assert_close(padded[1:], single, atol=1e-4, rtol=1e-4)


def test_extracted_decoder_is_bidirectional_and_causal_lm_is_not(tiny_dirs):
    """Changing only the LAST token must move the FIRST token's state in the extracted
    encoder (it attends forward) and must not in the causal LM."""
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[5, 6, 7, 9]])
    bidir = _model(tiny_dirs["llama"], family="extracted_encoder", head="mean_pool")
    causal = _model(tiny_dirs["llama"], family="causal_lm", head="last_token")
    assert (_hidden(bidir, a)[0, 0] - _hidden(bidir, b)[0, 0]).abs().max() > 1e-3
    assert (_hidden(causal, a)[0, 0] - _hidden(causal, b)[0, 0]).abs().max() == 0


def test_decoder_mask_masks_padding_and_future():
    mask = decoder_mask(torch.tensor([[1, 1, 0]]), torch.float32, causal=True)[0, 0]
    blocked = mask < 0
    assert blocked.tolist() == [[False, True, True], [False, False, True], [False, False, True]]
    mask = decoder_mask(torch.tensor([[1, 1, 0]]), torch.float32, causal=False)[0, 0]
    assert (mask < 0).tolist() == [[False, False, True]] * 3


def test_layers_cut_keeps_first_k(tiny_dirs):
    model = _model(tiny_dirs["llama"], family="extracted_encoder", head="mean_pool", layers=1)
    assert len(model.backbone.layers) == 1
    assert model.backbone.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="only 3"):
        _model(tiny_dirs["llama"], family="extracted_encoder", head="mean_pool", layers=9)


def test_label_words_score_the_lm_next_token_logits(tiny_dirs):
    """Untrained, label-word logits equal the full LM's next-token logits of those words."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_dirs["llama"]))
    ids = label_token_ids(tok, ["negative", "positive"], {"negative": "bad", "positive": "good"})
    model = _model(tiny_dirs["llama"], family="causal_lm", head="label_words", label_token_ids=ids)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    enc = tok(["it was fine . sentiment :", "awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"])["logits"]
        full = lm(**enc).logits  # (B, T, V)
    last = enc["attention_mask"].sum(1) - 1
    expected = full[torch.arange(2), last][:, list(ids)]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_label_words_must_differ(tiny_dirs):
    tok = load_tokenizer(str(tiny_dirs["llama"]))
    with pytest.raises(ValueError, match="share a first token"):
        label_token_ids(tok, ["a", "b"], {"a": "good", "b": "good"})
    with pytest.raises(ValueError, match="no word for labels"):
        label_token_ids(tok, ["a", "b"], {"a": "good"})


def test_spec_rejects_head_that_does_not_fit_family():
    with pytest.raises(ValueError, match="does not fit family"):
        ModelSpec(family="encoder", head="last_token", num_labels=2)
