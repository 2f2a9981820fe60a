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
from core.data import (
    DatasetError,
    Split,
    benchmark_paths,
    carve_split,
    carve_validation,
    dataset_for,
    default_datasets_dir,
    load_dataset,
    read_split,
    write_split,
)
from loadtests.texts import read_texts
from tests.tiny_models import SST2_TEST, sst2_slice


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
        ({"label": "x"}, r"a.jsonl:2: no column 'text' \(columns: 'label'\)"),
        ({"text": "  ", "label": "x"}, "a.jsonl:2: empty text in column 'text'"),
        ({"text": 3, "label": "x"}, "a.jsonl:2: column 'text' must hold text, got 3"),
        ({"text": "hi"}, r"a.jsonl:2: no column 'label' \(columns: 'text'\)"),
        (
            {"text": "hi", "label": None},
            "a.jsonl:2: column 'label' must hold a label name, got null",
        ),
        ({"text": "hi", "label": " "}, "a.jsonl:2: column 'label' must hold a label name"),
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
    from smallcls.parser import DEFAULT_DEMO_CONFIG

    config = load_config(TrainConfig, DEFAULT_DEMO_CONFIG.parent / "train_minilm.yaml", {})
    assert config.family == "encoder" and config.base_model == "minilm-l6"


def test_demo_config_in_repo_is_valid():
    from smallcls.parser import DEFAULT_DEMO_CONFIG

    config = load_config(DemoConfig, DEFAULT_DEMO_CONFIG, {})
    families = {m.family for m in config.models}
    assert families == {"encoder", "extracted_encoder", "causal_lm"}
    with pytest.raises(ConfigError, match="unique"):
        from_mapping(DemoConfig, {"models": [{"name": "a", "family": "encoder"}] * 2})
    one = {"models": [{"name": "a", "family": "encoder"}]}
    assert from_mapping(DemoConfig, {**one, "price_targets_ms": [50, 100]}).price_targets_ms == [
        50,
        100,
    ]
    with pytest.raises(ConfigError, match="price_targets_ms"):
        from_mapping(DemoConfig, {**one, "price_targets_ms": [0]})


def test_model_precisions_replace_the_variants_of_the_models_they_name():
    two = {"models": [{"name": "a", "family": "encoder"}, {"name": "b", "family": "encoder"}]}
    config = from_mapping(DemoConfig, {**two, "model_precisions": {"a": ["fp32", "int8-fused"]}})
    assert config.precisions_for("a") == ["fp32", "int8-fused"]
    assert config.precisions_for("b") == config.precisions == ["fp32", "int8"]
    for bad, message in [
        ({"c": ["fp32"]}, "names 'c'"),
        ({"a": ["int3"]}, "model_precisions.a must be among"),
        ({"a": []}, "non-empty"),
        (["fp32"], "must map model names"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_mapping(DemoConfig, {**two, "model_precisions": bad})
    # `precisions` is checked by the same rule, with its own name in the message.
    for bad, message in [(["int3"], "precisions must be among"), ([], "precisions must be a non")]:
        with pytest.raises(ConfigError, match=message):
            from_mapping(DemoConfig, {**two, "precisions": bad})


def test_compare_keeps_the_model_precisions_of_the_families_it_runs(tmp_path):
    from smallcls.compare import CompareInputs, compare_config
    from smallcls.parser import DEFAULT_DEMO_CONFIG

    inputs = CompareInputs(train=SST2_TEST)
    kw = {"preset": DEFAULT_DEMO_CONFIG, "echo": lambda line: None}
    everything = compare_config(inputs, tmp_path / "all", **kw)
    assert "int8-fused" in everything.precisions_for("minilm")
    assert "int8-fused" not in everything.precisions_for("smollm2-last")
    decoders = compare_config(inputs, tmp_path / "dec", families=["causal_lm"], **kw)
    assert [m.name for m in decoders.models] == ["smollm2-last"]
    assert decoders.model_precisions == {}


@pytest.mark.parametrize("name", ["train_goemotions.yaml", "train_imdb_lora.yaml"])
def test_benchmark_train_configs_in_repo_are_valid(name):
    from smallcls.parser import DEFAULT_DEMO_CONFIG

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
def test_task_config_checks_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(TrainConfig, {"name": "m", "family": "encoder", **override})


# --- The user's own files: formats, columns, carving, errors, sources -----------------------


def _write_table(path, header, rows):
    """A CSV (quoted where needed) or a TSV (cells literal, as the reader takes them)."""
    import csv

    if path.suffix == ".tsv":
        lines = ["\t".join(map(str, cells)) + "\n" for cells in [header, *rows]]
        path.write_text("".join(lines), encoding="utf-8")
        return path
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    return path


def _labelled(counts):
    """Rows with unique texts: {label: number of rows}."""
    return [(f"{label} text {i}", label) for label, n in counts.items() for i in range(n)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".csv.gz"])
def test_every_format_reads_custom_column_names(tmp_path, suffix):
    rows = [('she said "hi", twice', "greet"), ("bye now", "leave"), ("hello", "greet")]
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        _write(path, [{"utterance": t, "intent": y, "id": i} for i, (t, y) in enumerate(rows)])
    else:
        plain = _write_table(tmp_path / f"plain{suffix.removesuffix('.gz')}",
                             ["id", "utterance", "intent"],
                             [(i, t, y) for i, (t, y) in enumerate(rows)])  # fmt: skip
        if suffix.endswith(".gz"):
            import gzip

            path.write_bytes(gzip.compress(plain.read_bytes()))
        else:
            path = plain
    split = read_split(path, text_column="utterance", label_column="intent")
    assert split == Split([t for t, _ in rows], [y for _, y in rows])


def test_multi_label_columns_in_csv_and_jsonl(tmp_path):
    csv_path = _write_table(
        tmp_path / "a.csv", ["text", "labels"], [("yay", "joy, love"), ("meh", "")]
    )
    assert read_split(csv_path).labels == [("joy", "love"), ()]
    # An explicit column holding JSON lists is multi-label; holding strings, single-label.
    jsonl = _write(tmp_path / "a.jsonl", [{"t": "yay", "tags": ["joy", "love"], "one": "a,b"}])
    assert read_split(jsonl, text_column="t", label_column="tags").labels == [("joy", "love")]
    assert read_split(jsonl, text_column="t", label_column="one").labels == ["a,b"]


def test_write_split_round_trips(tmp_path):
    single = Split(["a", "b ü"], ["x", "y"])
    multi = Split(["a", "b"], [("x", "y"), ()])
    assert read_split(write_split(tmp_path / "s.jsonl", single)) == single
    assert read_split(write_split(tmp_path / "m.jsonl", multi)) == multi


def test_carving_is_stratified_and_keeps_rare_labels():
    counts = {"a": 200, "b": 120, "c": 40, "d": 3, "e": 1}
    rows = _labelled(counts)
    split = Split([t for t, _ in rows], [y for _, y in rows])
    rest, carved = carve_split(split, 0.2, None, seed=0)
    assert len(carved) == int(len(split) * 0.2)
    for label, n in counts.items():
        # Each label's share of the carved rows within one row of exact (largest remainder),
        # and at least one row of it left in rest.
        assert abs(carved.labels.count(label) - len(carved) * n / len(split)) < 1
        assert rest.labels.count(label) >= 1
    assert "e" not in carved.labels
    assert sorted(rest.texts + carved.texts) == sorted(split.texts)


def test_carving_is_seeded():
    rows = _labelled({"a": 60, "b": 40})
    split = Split([t for t, _ in rows], [y for _, y in rows])
    assert carve_split(split, 0.25, None, seed=3) == carve_split(split, 0.25, None, seed=3)
    assert carve_split(split, 0.25, None, seed=3) != carve_split(split, 0.25, None, seed=4)
    _, capped = carve_split(split, 0.5, 10, seed=0)
    assert len(capped) == 10 and capped.labels.count("a") == 6


def test_multi_label_carving_never_loses_a_label():
    labels = [("x",)] * 30 + [("x", "y")] * 20 + [()] * 10 + [("rare",)]
    split = Split([f"t{i}" for i in range(len(labels))], labels)
    for seed in range(20):
        rest, carved = carve_split(split, 0.3, None, seed)
        assert carved.label_names() <= rest.label_names() and "rare" in rest.label_names()
        assert sorted(rest.texts + carved.texts) == sorted(split.texts)


def test_train_file_alone_is_split_three_ways_without_loss(tmp_path):
    rows = _labelled({"pos": 90, "neg": 60, "odd": 1})
    (tmp_path / "mine").mkdir()
    train = _write_table(tmp_path / "mine" / "all.csv", ["review", "stars"], rows)
    ds = load_dataset(train, None, text_column="review", label_column="stars", seed=1)
    parts = [ds.train, ds.validation, ds.test]
    pairs = sorted(p for s in parts for p in zip(s.texts, s.labels, strict=True))
    assert pairs == sorted(rows)  # no row lost, none duplicated
    assert len(ds.test) == 30 and len(ds.validation) == 12  # 20% of 151, then 10% of 121
    assert ds.test.labels.count("pos") == 18 and ds.test.labels.count("neg") == 12
    assert ds.label_names == ["neg", "odd", "pos"] and "odd" in ds.train.labels
    assert ds.name == "mine" and ds.source.test_path is None


def test_carving_a_real_slice_keeps_every_row(tmp_path):
    (tmp_path / "sst2").mkdir()
    train = sst2_slice(SST2_TEST, tmp_path / "sst2" / "train.jsonl", 300)
    whole = read_split(train)
    ds = load_dataset(train, test_fraction=0.3, seed=5)
    texts = ds.train.texts + ds.validation.texts + ds.test.texts
    assert sorted(texts) == sorted(whole.texts)
    share = whole.labels.count("positive") / len(whole)
    assert abs(ds.test.labels.count("positive") / len(ds.test) - share) < 0.02


def _case_files(tmp_path, case):
    """(train, test) paths of one bad-input case."""
    good = _write(
        tmp_path / "good.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(8)]
    )
    if case == "one_class":
        return _write(
            tmp_path / "one.jsonl", [{"text": f"t{i}", "label": "a"} for i in range(5)]
        ), None
    if case == "unseen_test":
        return good, _write(
            tmp_path / "test.jsonl", [{"text": "x", "label": "c"}, {"text": "y", "label": "d"}]
        )
    if case == "unknown_column":
        return _write_table(tmp_path / "a.csv", ["sentence", "label"], [("x", "a")]), good
    if case == "empty_cell":
        return _write_table(tmp_path / "a.tsv", ["text", "label"], [("x", "a"), ("", "b")]), good
    if case == "suffix":
        (tmp_path / "a.xlsx").write_text("text,label\n")
        return tmp_path / "a.xlsx", good
    if case == "empty_file":
        (tmp_path / "a.jsonl").write_text("")
        return tmp_path / "a.jsonl", good
    if case == "empty_csv":
        (tmp_path / "a.csv").write_text("")
        return tmp_path / "a.csv", good
    if case == "header_only":
        (tmp_path / "a.csv").write_text("text,label\n")
        return tmp_path / "a.csv", good
    if case == "no_header":
        (tmp_path / "a.csv").write_text("good film,pos\nbad film,neg\n")
        return tmp_path / "a.csv", good
    if case == "short_row":
        (tmp_path / "a.csv").write_text("text,label\nfine,pos\ngood, cheap,pos\n")
        return tmp_path / "a.csv", good
    if case == "not_object":
        (tmp_path / "a.jsonl").write_text('{"text": "a", "label": "x"}\n["b", "y"]\n')
        return tmp_path / "a.jsonl", good
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one_class", r"one\.jsonl: the training data has only the label 'a'; .*add rows"),
        ("unseen_test", r"test\.jsonl: test labels \['c', 'd'\] never occur in the training "
                        "data; add training rows"),
        ("unknown_column", r"a\.csv:1: the header has no column 'text' "
                           r"\(it has: 'sentence', 'label'\)"),
        ("empty_cell", r"a\.tsv:3: empty text in column 'text'; fill it in or drop the row"),
        ("suffix", r"a\.xlsx: cannot read file type '\.xlsx'; use \.jsonl, \.json, \.csv or \.tsv"),
        ("empty_file", r"a\.jsonl: no rows \(the file is empty\)"),
        ("empty_csv", r"a\.csv: the file is empty; a CSV needs a header line"),
        ("header_only", r"a\.csv: a header but no rows"),
        ("no_header", r"a\.csv:1: the header has no column 'text' \(it has: 'good film', "
                      r"'pos'\); the first line must name the columns"),
        ("short_row", r"a\.csv:3: 3 cells but the header names 2 columns; quote cells"),
        ("not_object", r"a\.jsonl:2: expected a JSON object per line, got list"),
    ],
)  # fmt: skip
def test_bad_input_says_what_is_wrong_and_what_to_do(tmp_path, case, message):
    train, test = _case_files(tmp_path, case)
    with pytest.raises(DatasetError, match=message):
        load_dataset(train, test)


def test_unseen_validation_labels_and_uncarvable_data_are_named(tmp_path):
    train = _write(
        tmp_path / "train.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)]
    )
    val = _write(tmp_path / "val.jsonl", [{"text": "v", "label": "zzz"}])
    with pytest.raises(DatasetError, match=r"val\.jsonl: validation labels \['zzz'\] never occur"):
        load_dataset(train, train, validation_path=val)
    tiny = _write(
        tmp_path / "tiny.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    )
    with pytest.raises(
        DatasetError, match=r"tiny\.jsonl: cannot carve a test split .* give a test_path"
    ):
        load_dataset(tiny)


def test_dataset_for_names_the_real_files(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    train = _write_table(folder / "train.tsv", ["body", "verdict"], _labelled({"p": 30, "n": 20}))
    config = TrainConfig(
        name="m", family="encoder", train_path=str(train), test_path=None,
        text_column="body", label_column="verdict", test_rows=5,
    )  # fmt: skip
    ds = dataset_for(config)
    assert ds.source.to_dict() == {
        "name": "reviews", "train_path": str(train.resolve()), "test_path": None,
        "validation_path": None, "text_column": "body", "label_column": "verdict",
        "test_rows": 5, "hub_dataset": None,
    }  # fmt: skip
    assert len(ds.test) == 5 and len(ds.validation) == 4


@pytest.mark.skipif(not default_datasets_dir().is_dir(), reason="../shared/datasets absent")
def test_dataset_for_a_benchmark_names_its_files():
    ds = dataset_for(TrainConfig(name="m", family="encoder", dataset="trec", test_rows=50))
    paths = benchmark_paths("trec")
    assert ds.source.name == "trec" and ds.name == "trec"
    assert ds.source.train_path == str(paths["train"].resolve())
    assert ds.source.test_path == str(paths["test"].resolve())
    assert ds.source.validation_path is None and ds.source.test_rows == 50


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_read_texts_reads_csv_and_tsv(tmp_path, suffix):
    path = _write_table(
        tmp_path / f"t{suffix}", ["label", "text"], [("a", "one, two"), ("b", "three")]
    )
    assert read_texts(path) == ["one, two", "three"]
    assert read_texts(path, text_column="label") == ["a", "b"]
    with pytest.raises(ValueError, match=rf"t\{suffix}:1: the header has no column 'body'"):
        read_texts(path, text_column="body")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\)"),
        ({"text_column": " "}, "text_column must be a non-empty column name"),
        ({"label_column": ""}, "label_column must be a non-empty column name"),
        ({"dataset": "trec", "text_column": "body"}, "benchmark dataset 'trec' uses 'text'"),
        ({"train_path": ""}, "train_path must name a file"),
    ],
)
def test_data_file_config_checks_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(TrainConfig, {"name": "m", "family": "encoder", **override})
    assert from_mapping(TrainConfig, {"name": "m", "family": "encoder", "test_path": None})
