"""The preprocessing and decision contract in core/: what it makes of texts and logits, and the
clear refusals of a manifest or a run without a usable contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from core.decision import DecisionError, DecisionRule
from core.manifest import Manifest, ManifestError
from core.preprocessing import Preprocessing, PreprocessingError, TextEncoder
from core.run_record import RunRecord, RunRecordError
from tests.fakes import make_tiny_model_dir

WORDS = [f"w{i}" for i in range(40)]


def _tokenizer() -> Tokenizer:
    """Word-level, one token per word, with BERT-style [CLS] ... [SEP] around each text."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {
        w: i + 4 for i, w in enumerate(WORDS)
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


def _words(ids: list[int]) -> list[str]:
    return [WORDS[i - 4] for i in ids if i >= 4]


TEXT = " ".join(WORDS[:30])  # 30 tokens + 2 specials


@pytest.mark.parametrize(
    ("truncation", "kept"),
    [
        ("head", WORDS[:8]),  # 10 = [CLS] + 8 words + [SEP]
        ("tail", WORDS[22:30]),
        # head_tail: budget 8 text tokens, the first quarter (2) and the last 6.
        ("head_tail", WORDS[:2] + WORDS[24:30]),
    ],
)
def test_truncation_keeps_the_recorded_part_of_the_text(truncation, kept):
    encoder = TextEncoder(_tokenizer(), Preprocessing(max_length=10, truncation=truncation))
    encoded = encoder.encode([TEXT, "w1 w2"])
    assert _words(encoded.ids[0]) == kept
    assert encoded.ids[0][0] == 2 and encoded.ids[0][-1] == 3  # specials survive
    assert len(encoded.ids[0]) == 10
    assert encoded.truncated.tolist() == [True, False]
    assert _words(encoded.ids[1]) == ["w1", "w2"]


def test_a_template_is_filled_before_truncation_and_its_words_kept():
    pre = Preprocessing(max_length=8, truncation="tail", prompt_template="{text} w39")
    (ids,) = TextEncoder(_tokenizer(), pre).encode([TEXT]).ids
    assert _words(ids)[-1] == "w39" and len(ids) == 8


def test_the_encoder_ignores_the_tokenizers_own_state():
    # A tokenizer saved with padding and truncation switched on (as some hub files are) must
    # give the same ids: only the record decides.
    stateful = _tokenizer()
    stateful.enable_padding(length=32)
    stateful.enable_truncation(4)
    pre = Preprocessing(max_length=12)
    assert TextEncoder(stateful, pre).encode([TEXT]).ids == (
        TextEncoder(_tokenizer(), pre).encode([TEXT]).ids
    )


def test_padding_is_right_padding_with_the_recorded_pad_id():
    pre = Preprocessing(max_length=16, pad_token_id=7)
    feeds = TextEncoder(_tokenizer(), pre).batch(["w1", "w1 w2 w3"])
    assert feeds["input_ids"][0].tolist() == [2, 5, 3, 7, 7]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_preprocessing_refuses_bad_values_by_name():
    with pytest.raises(PreprocessingError, match="truncation"):
        Preprocessing(max_length=8, truncation="middle")  # type: ignore[arg-type]
    with pytest.raises(PreprocessingError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"max_length": 8, "side": "left"})


LOGITS = np.array([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 5.0]])


def test_rejection_answers_the_out_of_scope_label_below_the_threshold():
    rule = DecisionRule(labels=["a", "b", "oos"], oos_label="oos", rejection_threshold=0.5)
    decisions = rule.decide(LOGITS)
    assert decisions.rejected.tolist() == [False, True, False]
    assert [a["label"] for a in rule.answers(decisions)] == ["a", "oos", "oos"]
    # A per-call threshold replaces the rule's: 0 rejects nothing.
    assert rule.decide(LOGITS, rejection_threshold=0.0).label_ids.tolist() == [0, 0, 2]


def test_multi_label_chooses_every_label_over_its_threshold():
    rule = DecisionRule(
        labels=["a", "b", "c"], problem_type="multi_label", thresholds=[0.9, 0.5, 0.5]
    )
    answers = rule.answers(rule.decide(np.array([[1.0, 1.0, -3.0]])))
    assert answers == [{"label": "a", "labels": ["b"], "rejected": False}]


def test_decision_rules_refuse_inconsistent_settings():
    with pytest.raises(DecisionError, match="together"):
        DecisionRule(labels=["a", "oos"], oos_label="oos")
    with pytest.raises(DecisionError, match="not among the labels"):
        DecisionRule(labels=["a", "b"], oos_label="oos", rejection_threshold=0.3)
    with pytest.raises(DecisionError, match="multi_label"):
        DecisionRule(labels=["a", "b"], thresholds=[0.5, 0.5])


def test_a_manifest_from_an_older_version_is_refused_with_what_to_do(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "m")
    data = json.loads((model_dir / "manifest.json").read_text())
    old = {k: v for k, v in data.items() if k not in ("preprocessing", "decision")}
    old |= {"schema_version": 1, "max_length": 16, "truncation_side": "right"}
    (model_dir / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ManifestError, match=r"schema version 1.*re-export the run"):
        Manifest.read(model_dir)


def test_a_run_without_a_contract_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(RunRecordError, match=r"no contract\.json.*train it again"):
        RunRecord.read(tmp_path)
    (tmp_path / "contract.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(RunRecordError, match="schema version 0"):
        RunRecord.read(tmp_path)


@pytest.mark.parametrize("content", ["[]", "{oops"])
def test_a_manifest_that_is_not_a_json_object_is_refused_by_name(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=r"manifest\.json"):
        Manifest.read(tmp_path)
