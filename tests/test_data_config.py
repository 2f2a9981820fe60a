"""Dataset loading and config validation: bad input gets an error naming file/line/field."""

from __future__ import annotations

import json

import pytest

from core.config import (
    ConfigError,
    DemoConfig,
    TrainConfig,
    from_mapping,
    load_config,
    parse_overrides,
)
from core.data import DatasetError, carve_validation, load_dataset, read_split
from tests.tiny_models import SST2_TEST


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_and_csv_give_the_same_split(tmp_path):
    rows = [{"text": "good , fine", "label": "pos"}, {"text": "bad", "label": "neg"}]
    jsonl = _write(tmp_path / "a.jsonl", rows)
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('text,label\n"good , fine",pos\nbad,neg\n', encoding="utf-8")
    assert read_split(jsonl) == read_split(csv_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"label": "x"}, "a.jsonl:2: field 'text'"),
        ({"text": "  ", "label": "x"}, "a.jsonl:2: field 'text'"),
        ({"text": "hi"}, "a.jsonl:2: missing field 'label'"),
        ({"text": "hi", "labels": ["x"]}, "multi-label"),
    ],
)
def test_bad_rows_are_named(tmp_path, row, message):
    path = _write(tmp_path / "a.jsonl", [{"text": "ok", "label": "x"}, row])
    with pytest.raises(DatasetError, match=message):
        read_split(path)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"a\.jsonl:2: not valid JSON"):
        read_split(path)


def test_validation_is_carved_seeded_and_disjoint():
    split = read_split(SST2_TEST)
    train_a, val_a = carve_validation(split, 0.1, 50, seed=1)
    _, val_b = carve_validation(split, 0.1, 50, seed=1)
    _, val_c = carve_validation(split, 0.1, 50, seed=2)
    assert val_a == val_b and val_a != val_c
    assert len(val_a) == 50 and len(train_a) == len(split) - 50
    assert not set(val_a.texts) & set(train_a.texts)  # the SST-2 test texts are unique


def test_label_names_are_sorted_and_test_labels_must_be_known(tmp_path):
    train = _write(
        tmp_path / "train.jsonl",
        [{"text": f"t{i}", "label": "b" if i % 2 else "a"} for i in range(20)],
    )
    test = _write(tmp_path / "test.jsonl", [{"text": "x", "label": "a"}])
    dataset = load_dataset(train, test)
    assert dataset.label_names == ["a", "b"]
    bad_test = _write(tmp_path / "bad.jsonl", [{"text": "x", "label": "c"}])
    with pytest.raises(DatasetError, match=r"test labels \['c'\]"):
        load_dataset(train, bad_test)


def test_unknown_config_key_fails_loudly():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig keys \['lr'\]"):
        from_mapping(TrainConfig, {"name": "m", "family": "encoder", "lr": 0.1})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": 0}, "epochs must be > 0"),
        ({"batch_size": "many"}, "batch_size must be int"),
        ({"head": "label_words"}, "needs label_words"),
        ({"prompt_template": "no slot"}, "must contain"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_config_checks_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(TrainConfig, {"name": "m", "family": "encoder", **override})


def test_yaml_file_plus_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: m\nfamily: encoder\nlearning_rate: 1.0e-4\n")
    config = load_config(
        TrainConfig, path, parse_overrides(["learning_rate=3e-5", "train_rows=100"])
    )
    assert config.learning_rate == pytest.approx(3e-5) and config.train_rows == 100
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["learning_rate"])


def test_train_config_example_in_repo_is_valid():
    from smallcls.cli import DEFAULT_DEMO_CONFIG

    config = load_config(TrainConfig, DEFAULT_DEMO_CONFIG.parent / "train_minilm.yaml", {})
    assert config.family == "encoder" and config.base_model == "minilm-l6"


def test_demo_config_in_repo_is_valid():
    from smallcls.cli import DEFAULT_DEMO_CONFIG

    config = load_config(DemoConfig, DEFAULT_DEMO_CONFIG, {})
    families = {m.family for m in config.models}
    assert families == {"encoder", "extracted_encoder", "causal_lm"}
    with pytest.raises(ConfigError, match="unique"):
        from_mapping(DemoConfig, {"models": [{"name": "a", "family": "encoder"}] * 2})


@pytest.mark.parametrize("name", ["train_goemotions.yaml", "train_imdb_lora.yaml"])
def test_benchmark_train_configs_in_repo_are_valid(name):
    from smallcls.cli import DEFAULT_DEMO_CONFIG

    config = load_config(TrainConfig, DEFAULT_DEMO_CONFIG.parent / name, {})
    assert config.dataset in ("goemotions", "imdb")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"truncation": "middle"}, "truncation must be"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"few_shot_k": 2}, "few_shot_k works only"),
        ({"mntp_steps": 10}, "mntp_steps applies only"),
        ({"class_weighting": "auto"}, "class_weighting must be"),
        ({"unlabeled_path": "u.jsonl"}, "needs a teacher_run"),
    ],
)
def test_issue3_config_checks_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(TrainConfig, {"name": "m", "family": "encoder", **override})
