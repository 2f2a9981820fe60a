"""The accuracy gate on hand-made logits: what it accepts, what it refuses and why."""

from __future__ import annotations

import numpy as np
import pytest

from core.decision import DecisionRule
from export import gate

RNG = np.random.default_rng(0)
PARENT = RNG.normal(size=(200, 3)).astype(np.float32)
TRUTH = PARENT.argmax(-1)  # the parent is right everywhere: any flip costs accuracy
RULE = DecisionRule(labels=["a", "b", "c"])


def test_a_faithful_variant_passes():
    result = gate.check(PARENT + 1e-3, PARENT, TRUTH, rule=RULE)
    assert result.passed and result.reasons == []
    assert result.agreement == 1.0 and result.accuracy == result.parent_accuracy == 1.0
    assert result.max_abs_logit_diff == pytest.approx(1e-3, rel=1e-2)
    assert "passed" in result.message("m-int8")


def test_an_accuracy_drop_over_one_point_is_refused():
    damaged = PARENT.copy()
    damaged[:3] = -damaged[:3]  # 3 of 200 rows flipped: 1.5 points, 98.5% agreement
    result = gate.check(damaged, PARENT, TRUTH, rule=RULE)
    assert not result.passed
    assert result.accuracy_drop == pytest.approx(0.015)
    assert any("1.5 points below" in r for r in result.reasons)
    assert any("98.50%" in r for r in result.reasons)
    message = result.message("m-int8")
    assert message.startswith("m-int8 refused by the accuracy gate") and "--force" in message


def test_low_agreement_is_refused_even_without_accuracy_loss():
    # Two flips that trade a wrong row for a right one keep accuracy but change labels.
    truth = TRUTH.copy()
    truth[0] = (truth[0] + 1) % 3
    damaged = PARENT.copy()
    damaged[0, truth[0]] = 100.0  # now right where the parent was wrong
    damaged[1] = -damaged[1]  # now wrong where the parent was right
    result = gate.check(damaged, PARENT, truth, min_agreement=0.999, rule=RULE)
    assert result.accuracy_drop == pytest.approx(0.0)
    assert not result.passed and result.reasons == [
        "agrees with fp32 on 99.00% of test rows (needs 100%)"
    ]


def test_nan_or_inf_is_refused():
    damaged = PARENT.copy()
    damaged[5, 0] = np.nan
    damaged[6, 1] = np.inf
    result = gate.check(damaged, PARENT, TRUTH, max_accuracy_drop=1.0, min_agreement=0.0, rule=RULE)
    assert not result.passed and not result.finite
    assert result.reasons == ["NaN/inf logits on 2 of 200 test rows"]
    assert result.agreement == pytest.approx(198 / 200)  # NaN rows never count as agreeing


def test_a_collapsed_model_is_refused():
    collapsed = np.zeros_like(PARENT)
    collapsed[:, 0] = 1.0  # one label for everything
    result = gate.check(collapsed, PARENT, TRUTH, rule=RULE)
    assert not result.passed and len(result.reasons) == 2


def test_multi_label_agreement_is_exact_match_of_label_sets():
    parent = np.array([[2.0, -2.0, 0.1], [-1.0, 3.0, 3.0]], dtype=np.float32)
    # Row 0 moves label 2 across its 0.6 threshold (sigmoid(0.1)=0.52 -> 0.75); row 1 stays.
    variant = parent + np.array([[0.0, 0.0, 1.0], [0.1, 0.1, 0.1]], dtype=np.float32)
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    rule = DecisionRule(
        labels=["a", "b", "c"], problem_type="multi_label", thresholds=[0.5, 0.5, 0.6]
    )
    result = gate.check(variant, parent, truth, rule=rule)
    assert result.agreement == 0.5
    # Multi-label runs are gated on their own metrics: macro/micro-F1 and exact match.
    assert result.metric == "macro_f1" and set(result.metrics) == {
        "macro_f1",
        "micro_f1",
        "exact_match",
    }
    assert result.metrics["exact_match"] == {"variant": 0.5, "parent": 1.0, "drop": 0.5}
    assert result.parent_accuracy == 1.0 and result.accuracy < 1.0
    assert not result.passed


def test_out_of_scope_rows_are_gated_with_rejection_applied():
    # Both agree on argmax everywhere, but the variant's confidence falls under the
    # rejection threshold on half the rows: those answers become "oos" and differ.
    parent = np.array([[4.0, 0.0, 0.0]] * 4, dtype=np.float32)
    variant = parent.copy()
    variant[:2] = [0.5, 0.0, 0.0]
    rule = DecisionRule(labels=["a", "b", "oos"], oos_label="oos", rejection_threshold=0.6)
    result = gate.check(variant, parent, np.zeros(4, dtype=int), rule=rule)
    assert result.agreement == 0.5 and result.accuracy == 0.5 and not result.passed


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ"):
        gate.check(PARENT[:10], PARENT, None, rule=RULE)
