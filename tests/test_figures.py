"""Every figure in the docs is the one a benchmark script wrote to docs/figures.json."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "benchmarks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_tables_match_figures_json():
    """README.md and docs/*.md: every table between markers is current, every table is in a doc,
    and no figures table stands outside its markers."""
    fig = _figures()
    docs = fig.documents()
    assert ROOT / "README.md" in docs and any(p.parent == ROOT / "docs" for p in docs)
    assert fig.problems(docs, fig.load()) == []


def test_problems_names_stale_stray_unknown_and_missing_tables():
    fig = _figures()
    figures = fig.load()
    current = fig.rewrite("<!-- figures:engine -->\n<!-- /figures:engine -->\n", figures)
    good = {ROOT / "docs" / "x.md": current}
    found = fig.problems(good, figures)
    assert all("is in no document" in p for p in found) and not any("'engine'" in p for p in found)

    stale = {ROOT / "docs" / "x.md": current.replace("| 10/10 |", "| 9/10 |", 1)}
    assert any("docs/x.md: figures differ" in p for p in fig.problems(stale, figures))

    by_hand = fig.render("compress", figures)  # a table pasted without its markers
    stray = {ROOT / "docs" / "x.md": current + "\n" + by_hand + "\n"}
    assert any("docs/x.md: a figures table outside" in p for p in fig.problems(stray, figures))

    unknown = {ROOT / "README.md": "<!-- figures:nope -->\n<!-- /figures:nope -->\n"}
    assert any("no table 'nope'" in p for p in fig.problems(unknown, figures))


def test_every_table_row_names_a_registered_figure_and_its_machine():
    fig = _figures()
    figures = fig.load()
    for rows in fig.TABLES.values():
        for _, name, path, _, _ in rows:
            assert name in fig.FIGURES, name
            if name in figures:  # measured: the value exists and the machine is named
                fig._get(figures[name]["measured"], path)
                assert figures[name]["measured"].get("cpu_model"), name


def test_render_reports_missing_figures_instead_of_inventing_them():
    fig = _figures()
    text = fig.render("engine", {})
    assert "not measured" in text and not re.search(r"\d+\.\d+ s", text)
    measured = {
        "engine_overhead": {
            "command": ["x"],
            "date": "2026-01-01",
            "measured": {"fixed_cost_s": 3.25, "cpu_model": "CPU Z", "cpus": 2},
        }
    }
    text = fig.render("engine", measured)
    assert "| 3.2 s |" in text or "| 3.3 s |" in text
    assert "CPU Z, 2 cores" in text
