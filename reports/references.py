"""Published reference results per benchmark dataset, each cited by its publication's title
and link, for the answer page's "published" column.

core/benchmarks.py holds each dataset's headline metric and the BERT-base-class figure it is
compared with (`reference_value`); this module adds where that figure was published, so the
page never shows a figure without its source. A dataset with no entry here shows no reference
rather than an unsourced one.
"""

from __future__ import annotations

import dataclasses

from core.benchmarks import BENCHMARKS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reference:
    dataset: str
    metric: str  # accuracy | macro_f1 | in_scope_accuracy, as core/benchmarks.py names it
    value: float  # fraction 0..1: the figure the table compares with
    what: str  # the model and setting the figure is for
    title: str  # the publication's title
    url: str
    caveat: str = ""  # why the figure is not directly comparable, when it is not

    def citation(self) -> str:
        """One line: figure, model, publication title and link."""
        text = f"{self.what}: {self.value:.1%} {label(self.metric)}, in “{self.title}” ({self.url})"
        return text + (f"; {self.caveat}" if self.caveat else "")


def label(metric: str) -> str:
    return {
        "accuracy": "accuracy",
        "macro_f1": "macro-F1",
        "in_scope_accuracy": "in-scope accuracy",
    }.get(metric, metric)


def _ref(dataset: str, value: float | None = None, **fields: str) -> Reference:
    """The dataset's metric from core/benchmarks.py; its figure too unless the cited
    publication's own figure differs from the approximate one recorded there."""
    info = BENCHMARKS[dataset]
    figure = info.reference_value if value is None else value
    assert figure is not None
    return Reference(dataset=dataset, metric=info.metric, value=figure, **fields)


REFERENCES: dict[str, Reference] = {
    r.dataset: r
    for r in [
        _ref(
            "sst2",
            0.935,
            what="BERT-base, fine-tuned (GLUE test set)",
            title="BERT: Pre-training of Deep Bidirectional Transformers for Language "
            "Understanding",
            url="https://arxiv.org/abs/1810.04805",
            caveat="GLUE test set; the test split here is GLUE dev",
        ),
        _ref(
            "banking77",
            what="BERT, fine-tuned, full training set",
            title="Efficient Intent Detection with Dual Sentence Encoders",
            url="https://arxiv.org/abs/2003.04807",
        ),
        _ref(
            "emotion",
            what="bert-base-uncased fine-tuned on this split (model card)",
            title="bert-base-uncased-emotion",
            url="https://huggingface.co/bhadresh-savani/bert-base-uncased-emotion",
        ),
        _ref(
            "trec",
            0.936,
            what="CNN with fine-tuned word vectors (CNN-non-static)",
            title="Convolutional Neural Networks for Sentence Classification",
            url="https://arxiv.org/abs/1408.5882",
            caveat="a CNN, not a transformer: fine-tuned BERT-class models reach about 96-97%",
        ),
        _ref(
            "ag_news",
            what="BERT-base, fine-tuned on the full 120,000-row training set",
            title="How to Fine-Tune BERT for Text Classification?",
            url="https://arxiv.org/abs/1905.05583",
            caveat="trained on 120,000 rows; the models here see at most the 5,000-row subsample",
        ),
        _ref(
            "goemotions",
            what="BERT-base, 28 labels",
            title="GoEmotions: A Dataset of Fine-Grained Emotions",
            url="https://arxiv.org/abs/2005.00547",
        ),
        _ref(
            "clinc150",
            what="BERT, in-scope accuracy on the full variant",
            title="An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction",
            url="https://aclanthology.org/D19-1131/",
        ),
        _ref(
            "imdb",
            what="BERT-base, fine-tuned",
            title="How to Fine-Tune BERT for Text Classification?",
            url="https://arxiv.org/abs/1905.05583",
        ),
    ]
}


def reference_for(dataset: str) -> Reference | None:
    return REFERENCES.get(dataset)


def headline_metric(dataset: str, metrics: dict) -> tuple[str, float | None]:
    """(metric name, value) the dataset is judged by: the benchmark's own metric (as
    bench/accuracy.py reports it), else accuracy, else macro-F1 (multi-label files)."""
    info = BENCHMARKS.get(dataset)
    if info is not None and info.metric == "in_scope_accuracy":
        oos = metrics.get("oos")
        value = oos.get("in_scope_accuracy") if isinstance(oos, dict) else None
        return info.metric, value if value is not None else metrics.get("accuracy")
    if info is not None and info.metric == "macro_f1":
        return "macro_f1", metrics.get("macro_f1")
    if metrics.get("accuracy") is not None:
        return "accuracy", metrics["accuracy"]
    return "macro_f1", metrics.get("macro_f1")


def cited_price_references(references: list[dict]) -> tuple[list[dict], int]:
    """The price table's published figures that name their publication (`title` and `url`),
    each with a `citation` line, and how many were left out for naming none: a figure
    without its source is not shown."""
    cited = [
        {**r, "citation": f"“{r['title']}” ({r['url']})"}
        for r in references
        if isinstance(r, dict) and r.get("title") and r.get("url")
    ]
    return cited, len(references) - len(cited)
