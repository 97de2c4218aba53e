"""The report's per-class table: precision, recall, F1 and support of every class on the test split
(``BenchmarkRow.per_class``) for the selected model and the teacher, side by side.

A class is named when the models name their classes: a Hugging Face classifier's config keeps its
``id2label`` in the artifact's ``arch`` (``tasks.models.hf_model``), and ``hf_text_data`` numbers the
labels by that same ``id2label``. Default names (``LABEL_<id>``) name nothing: the id is shown.
"""

from __future__ import annotations

from tasks.core.types import BenchmarkReport, BenchmarkRow, ModelArtifact

FIGURES = (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))


def class_names(models: list[ModelArtifact | None]) -> dict[str, str]:
    """Class id (as a string, as in ``per_class``) -> name, from the first model whose config has an
    ``id2label`` naming real classes; {} when none does."""
    for m in models:
        config = m.arch.get("config") if m is not None and isinstance(m.arch, dict) else None
        labels = config.get("id2label") if isinstance(config, dict) else None
        if isinstance(labels, dict) and any(str(v) != f"LABEL_{k}" for k, v in labels.items()):
            return {str(k): str(v) for k, v in labels.items()}
    return {}


def _label(class_id: str, names: dict[str, str]) -> str:
    name = names.get(class_id)
    return class_id if name is None else f"{name.replace('|', '/')} ({class_id})"


def _cell(row: BenchmarkRow, class_id: str, key: str) -> str:
    figures = row.per_class.get(class_id)
    return "–" if figures is None else f"{float(figures[key]):.3f}"


def per_class_markdown(bench: BenchmarkReport, names: dict[str, str]) -> str:
    """``## Per class`` with one line per class of the test labels: its support, then precision,
    recall and F1 of the selected model and of the teacher; "" when neither has per-class figures."""
    rows: list[BenchmarkRow] = []
    for r in (bench.selected, bench.teacher):
        if r is not None and r.per_class and all(r.name != o.name for o in rows):
            rows.append(r)
    if not rows:
        return ""
    ids = sorted({c for r in rows for c in r.per_class}, key=int)
    head = ["class", "support"] + [f"{r.name} {word}" for r in rows for _, word in FIGURES]
    lines = [
        "## Per class (test split)",
        "",
        "Precision, recall and F1 of each class; macro-F1 is their mean F1 over these classes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in ids:
        support = next(int(r.per_class[c]["support"]) for r in rows if c in r.per_class)
        cells = [_label(c, names), str(support)] + [_cell(r, c, key) for r in rows for key, _ in FIGURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
