"""The measured int8 recipes: fused int8, smoothing, weight-only int8, mixed precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from core.decision import DecisionRule  # noqa: E402
from core.manifest import VARIANTS, Manifest  # noqa: E402
from export import gate, int8_recipes, sensitivity, smoothing  # noqa: E402
from export.int8_search import SELECTION_AGREEMENT, SearchData, logits_of  # noqa: E402
from export.variants import PRECISION, head_exclusions, op_counts, parse_variants  # noqa: E402
from service.runtime import OnnxClassifier  # noqa: E402
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice  # noqa: E402

RECIPES = int8_recipes.RECIPES
FAMILIES = {
    "encoder": dict(family="encoder", head="mean_pool", style="bert"),
    "bidir": dict(family="extracted_encoder", head="mean_pool", style="llama", layers=2),
    "last": dict(family="causal_lm", head="last_token", style="llama"),
}


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory):
    """{key: (run_dir, {variant: dir}, refused dirs)}: each family trained on a slice and
    exported with every recipe through the gate, not forced."""
    from core.config import TrainConfig
    from export.onnx_export import export_model
    from training.train import train

    root = tmp_path_factory.mktemp("quant")
    train_path = sst2_slice(SST2_TRAIN, root / "train.jsonl", 300)
    test_path = sst2_slice(SST2_TEST, root / "test.jsonl", 96)
    out = {}
    for key, spec in FAMILIES.items():
        spec = dict(spec)
        style = spec.pop("style")
        config = TrainConfig(
            name=key,
            base_model=str(tiny_dirs[style]),
            train_path=str(train_path),
            test_path=str(test_path),
            max_val_rows=32,
            learning_rate=1e-3,
            threads=1,
            max_length=32,
            **spec,
        )
        run_dir = train(config, root / "runs", show_progress=False)
        result = export_model(run_dir, root / "models", variants=("fp32", *RECIPES), parity_rows=32)
        every = result.accepted + result.refused
        out[key] = (run_dir, {Manifest.read(d).variant: d for d in every}, result.refused)
    return out


def test_recipes_are_variants_of_the_cli():
    assert set(RECIPES) <= set(VARIANTS)
    assert all(PRECISION[v] == "int8" for v in RECIPES)
    assert parse_variants(["int8-w8", "int8-fused"]) == ("int8-fused", "int8-w8")


def _test_texts(n: int = 96) -> list[str]:
    import json

    with open(SST2_TEST, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]


@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("variant", RECIPES)
def test_each_recipe_is_gated_on_what_it_serves(runs, key, variant):
    """The manifest's verdict is the gate's on the file's own test logits, and a refused
    file lies under refused/; a kept one answers like fp32."""
    _, dirs, refused = runs[key]
    from export.scoring import score

    # Scored as export scores (length-sorted batches): dynamic int8 depends on the batch.
    texts, threads = _test_texts(), torch.get_num_threads()
    fp32, _ = score(dirs["fp32"], texts, threads=threads)
    ours, _ = score(dirs[variant], texts, threads=threads)
    m = Manifest.read(dirs[variant])
    assert m.variant == variant and m.precision == "int8" and m.quantization
    import json

    with open(SST2_TEST, encoding="utf-8") as fh:
        truth = [json.loads(line)["label"] for _, line in zip(range(96), fh, strict=False)]
    y_true = np.array([m.labels.index(t) if isinstance(t, str) else int(t) for t in truth])
    verdict = gate.check(ours, fp32, y_true, rule=m.decision)
    assert m.gate["passed"] == verdict.passed
    assert m.gate["agreement"] == pytest.approx(verdict.agreement)
    assert (dirs[variant] in refused) == (not verdict.passed)
    if verdict.passed:
        assert verdict.agreement >= gate.MIN_AGREEMENT


def test_fused_int8_quantizes_the_fused_attention(runs):
    """BERT is fused before quantization, so attention runs as QAttention (int8), not as
    float Attention or as unfused MatMuls."""
    _, dirs, _ = runs["encoder"]
    counts = op_counts(dirs["int8-fused"] / "model.onnx")
    q = Manifest.read(dirs["int8-fused"]).quantization
    assert q["fused_first"].startswith("onnxruntime.transformers.optimizer")
    kept_float = len(q["excluded"])
    assert counts["QAttention"] + counts["Attention"] == 2  # two layers
    assert counts["QAttention"] >= 2 - kept_float
    assert counts["SkipLayerNormalization"] >= 2
    assert q["selection_agreement"] >= SELECTION_AGREEMENT
    tried = q["candidates_tried"]  # tried in order until one reaches the target
    assert next(iter(tried)) == "alpha=none reduce_range=false"
    assert all(v < SELECTION_AGREEMENT for v in list(tried.values())[:-1])
    assert q["selection_agreement"] >= SELECTION_AGREEMENT


@pytest.mark.parametrize("key", list(FAMILIES))
def test_dynamic_int8_leaves_the_embedding_lookups_in_float(runs, key):
    """Only products are quantized: a uint8 token table saves size, not time, and costs
    answers. The lookups of every dynamic recipe read float tables."""
    _, dirs, _ = runs[key]
    for variant in ("int8-fused", "int8-smooth", "int8-mixed"):
        counts = op_counts(dirs[variant] / "model.onnx")
        assert counts["QEmbedLayerNormalization"] == 0, variant
        model = onnx.load(str(dirs[variant] / "model.onnx"))
        floats = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
        lookup_ops = ("Gather", "EmbedLayerNormalization")
        lookups = [n for n in model.graph.node if n.op_type in lookup_ops]
        # Gather(table, ids); EmbedLayerNormalization(ids, segment ids, word table, ...)
        tables = [n.input[0] if n.op_type == "Gather" else n.input[2] for n in lookups]
        assert any(t in floats for t in tables), variant  # the token table
        assert not any(t.endswith("_quantized") for t in tables), variant


PRODUCTS = {"Gemm", "MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm",
            "MatMulIntegerToFloat", "MatMulNBits", "QLinearMatMul"}  # fmt: skip
QUANTIZERS = {"DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear"}


def _last_product(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, set[str]]:
    """The product nearest the logits output (the head), and the ops that feed its inputs."""
    made_by = {out: n for n in graph.node for out in n.output}
    todo, seen = [graph.output[0].name], set()
    while todo:
        node = made_by.get(todo.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in PRODUCTS:
            return node, {made_by[i].op_type for i in node.input if i in made_by}
        todo.extend(node.input)
    raise AssertionError("no product before the logits")


@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_recipe_keeps_the_head_in_float(runs, key):
    """The head rounds the very logits the decision rule reads and gains nothing from int8:
    in every recipe's file the product nearest the logits is a float Gemm or MatMul reading
    float inputs (the fused graph and the smoothed one included)."""
    _, dirs, _ = runs[key]
    for variant in ("fp32", *RECIPES):
        graph = onnx.load(str(dirs[variant] / "model.onnx"), load_external_data=False).graph
        head, feeders = _last_product(graph)
        assert head.op_type in {"Gemm", "MatMul"}, (variant, head.op_type, head.name)
        assert not feeders & QUANTIZERS, (variant, head.name, feeders)


def test_weight_only_int8_has_no_float_weights_left(runs):
    for key in FAMILIES:
        _, dirs, _ = runs[key]
        path = dirs["int8-w8"] / "model.onnx"
        model = onnx.load(str(path))
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all(a.i == 8 for n in nbits for a in n.attribute if a.name == "bits"), key
        assert not sensitivity.weighted_layers(model)  # every constant-weight MatMul went
        texts = _test_texts(32)
        fp32 = OnnxClassifier(dirs["fp32"]).logits(texts)
        np.testing.assert_allclose(OnnxClassifier(dirs["int8-w8"]).logits(texts), fp32, atol=0.05)


def test_mixed_keeps_exactly_the_chosen_layers_in_float(runs):
    for key in FAMILIES:
        _, dirs, _ = runs[key]
        q = Manifest.read(dirs["int8-mixed"]).quantization
        left = set(sensitivity.weighted_layers(onnx.load(str(dirs["int8-mixed"] / "model.onnx"))))
        head = left & set(head_exclusions(dirs["fp32"] / "model.onnx"))
        assert head, key  # the classification head stays float in every int8 file
        left -= head
        assert left == set(q["excluded"]) and q["fp32_nodes"] == len(left), key
        assert q["selection_agreement"] >= SELECTION_AGREEMENT
        if left:  # found by the search: the count kept is one it measured
            assert q["tried"][str(len(left))] == pytest.approx(q["selection_agreement"], abs=1e-4)
            assert q["ranked_by"] in ("end_to_end", "local_error")


def test_smoothing_reports_its_alpha_sweep(runs):
    _, dirs, _ = runs["last"]
    q = Manifest.read(dirs["int8-smooth"]).quantization
    assert set(q["alphas_tried"]) == {str(a) for a in int8_recipes.ALPHAS}
    assert q["smoothing"]["alpha"] in int8_recipes.ALPHAS
    assert q["smoothing"]["folded"] >= 2  # RMSNorm weights took s: q/k/v and gate/up inputs


# --- the pieces, on graphs built by hand --------------------------------------------------


def _outlier_graph(path: Path, rng: np.random.Generator) -> Path:
    """x -> LayerNorm-free Mul(gamma) -> MatMul(W1) -> MatMul(W2): a known function whose first
    MatMul reads an input with one huge channel."""
    gamma = np.ones(16, np.float32)
    w1 = rng.normal(size=(16, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["input_ids_f", "gamma"], ["h"], name="norm"),
        helper.make_node("MatMul", ["h", "w1"], ["y1"], name="first"),
        helper.make_node("MatMul", ["y1", "w2"], ["y2"], name="second"),
        helper.make_node("ReduceMean", ["y2"], ["logits"], name="pool", axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input_ids_f", TensorProto.FLOAT, ["b", "t", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])],
        [numpy_helper.from_array(a, n) for a, n in ((gamma, "gamma"), (w1, "w1"), (w2, "w2"))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _data(rng: np.random.Generator) -> SearchData:
    seed = int(rng.integers(1 << 30))

    def encode(texts):  # the same texts give the same inputs, as a tokenizer would
        text_rng = np.random.default_rng([seed, *(int(t[1:]) for t in texts)])
        x = text_rng.normal(size=(len(texts), 4, 16)).astype(np.float32)
        x[..., 3] *= 200.0  # one outlier channel, as after a decoder's RMSNorm
        return {"input_ids_f": x}

    rule = DecisionRule(labels=["a", "b"], problem_type="single_label")
    texts = [f"t{i}" for i in range(16)]
    return SearchData(
        model_type="x", calibration_texts=texts, selection_texts=texts, encode=encode, rule=rule
    )


def test_smoothing_keeps_the_function_and_shrinks_int8_error(tmp_path):
    rng = np.random.default_rng(0)
    src = _outlier_graph(tmp_path / "m.onnx", rng)
    data = _data(np.random.default_rng(1))
    how = smoothing.smooth(src, tmp_path / "s.onnx", data, alpha=0.5)
    assert how["folded"] == 1 and how["muls"] == 1  # gamma took the first s; y1 needed a Mul
    x = data.encode([f"t{i}" for i in range(8)])
    import onnxruntime as ort

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0]

    np.testing.assert_allclose(run(tmp_path / "s.onnx"), run(src), rtol=1e-4, atol=1e-3)
    before = dict(sensitivity.rank_layers(src, data))["first"]
    after = dict(sensitivity.rank_layers(tmp_path / "s.onnx", data))["first"]
    assert after < before / 3, (before, after)


def test_the_layer_reading_outliers_ranks_first(tmp_path):
    src = _outlier_graph(tmp_path / "m.onnx", np.random.default_rng(0))
    ranking = sensitivity.rank_layers(src, _data(np.random.default_rng(1)))
    assert [name for name, _ in ranking] == ["first", "second"]


def test_end_to_end_ranking_quantizes_one_layer_at_a_time(tmp_path):
    src = _outlier_graph(tmp_path / "m.onnx", np.random.default_rng(0))
    data = _data(np.random.default_rng(1))
    seen = []

    def only(s, t, nodes):
        seen.append(list(nodes))
        int8_recipes.dynamic_int8(s, t, [], only=nodes)

    ranking = sensitivity.rank_end_to_end(src, data, only, tmp_path / "one.onnx")
    assert sorted(seen) == [["first"], ["second"]]
    assert ranking[0][0] == "first"
    assert all(score > 0 for _, score in ranking)


def test_search_keeps_the_fewest_layers_that_reach_the_target(tmp_path, monkeypatch):
    """With agreement reached only once the 3 worst layers stay float, the search keeps
    exactly those 3 (not 4, the doubling step) and leaves the file built with them."""
    order = [f"n{i}" for i in range(10)]
    built: list[list[str]] = []

    def quantize(src, dst, excluded):
        built.append(list(excluded))

    monkeypatch.setattr(sensitivity, "logits_of", lambda *a: np.zeros((1, 2)))
    monkeypatch.setattr(sensitivity, "agreement", lambda *a: 1.0 if len(built[-1]) >= 3 else 0.9)
    data = _data(np.random.default_rng(0))
    found = sensitivity.fewest_in_float(
        tmp_path / "a",
        tmp_path / "b",
        data,
        quantize,
        reference_logits=np.zeros((1, 2)),
        ranking=[(n, 1.0) for n in order],
    )
    assert found["excluded"] == ["n0", "n1", "n2"] and found["fp32_nodes"] == 3
    assert built[-1] == ["n0", "n1", "n2"]
    assert found["tried"] == {"1": 0.9, "2": 0.9, "3": 1.0, "4": 1.0}  # 0: the caller's


def test_fused_tries_smoothing_when_plain_int8_falls_short(runs, tmp_path, monkeypatch):
    """With a target no candidate reaches, every candidate is measured (smoothing of the
    fused graph at each alpha included) and the best one goes on to the layer search."""
    from tests.tiny_models import sst2_texts

    _, dirs, _ = runs["encoder"]
    fp32 = OnnxClassifier(dirs["fp32"])
    texts = sst2_texts(200)
    data = SearchData(
        model_type="bert",
        calibration_texts=texts[:64],
        selection_texts=texts[64:],
        encode=fp32.encode,
        rule=fp32.decision,
    )
    monkeypatch.setattr(int8_recipes, "SELECTION_AGREEMENT", 1.01)
    q = int8_recipes.build_fused(dirs["fp32"] / "model.onnx", tmp_path / "m.onnx", data)
    assert len(q["candidates_tried"]) == 2 + len(int8_recipes.ALPHAS)
    best = max(q["candidates_tried"].values())
    assert q["smoothing"] == {} or q["smoothing"]["muls"] > 0  # BERT: nothing folds
    assert "ranked_by" in q and q["ranked_by"] == "end_to_end"
    assert q["selection_agreement"] >= min(best, SELECTION_AGREEMENT)
    assert np.isfinite(logits_of(tmp_path / "m.onnx", data, texts[:16])).all()
