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
    tables = [*fig.TABLES.values(), *[[("", name, path, "", "")] for name, path, _ in fig.LISTS.values()]]
    for rows in tables:
        for _, name, path, _, _ in rows:
            assert name in fig.FIGURES, name
            if name in figures:  # measured: the value exists (or its fallback) and the machine is named
                measured = figures[name]["measured"]
                alternatives = path.split(" || ")
                # intervals (`_ci95`) appear when a figure is re-measured by the seeded scripts: until then
                # "not measured"; every other path must exist in the stored figure
                pending = all("_ci95" in alt for alt in alternatives)
                assert pending or any(_resolves(fig, measured, alt) for alt in alternatives), (name, path)
                machine = measured.get("machine", {})
                if isinstance(machine, str):  # tasks.runtime.hardware.describe(): "<CPU> N cores/T threads, ..."
                    assert re.match(r"\S.* \d+ cores/\d+ threads", machine), (name, machine)
                else:
                    assert {**machine, **measured}.get("cpu_model"), name


def _resolves(fig, measured: dict, paths: str) -> bool:
    try:
        fig._values(measured, paths)
        return True
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def test_a_figure_typed_by_hand_outside_markers_fails():
    """A table row with a measured-looking number outside the markers is a figure no script wrote."""
    fig = _figures()
    figures = fig.load()
    current = fig.rewrite("<!-- figures:engine -->\n<!-- /figures:engine -->\n", figures)
    for typed in ("| int8 | 20.6 MB | 6.4 |", "| speedup | 4.41× (90.9 → 20.6 MB) |", "| acc | 98.31% |"):
        found = fig.problems({ROOT / "docs" / "x.md": current + "\n| a | b |\n|---|---|\n" + typed + "\n"}, figures)
        assert any("docs/x.md: a figure typed by hand" in p for p in found), typed
    config = "| key | default |\n|---|---|\n| `bits` | 4-bit blocks, `g` values |\n| `amount` | ≥ 0.5 |\n"
    found = fig.problems({ROOT / "docs" / "x.md": current + config}, figures)
    assert not any("typed by hand" in p for p in found)


def test_counts_and_verdicts_come_from_the_data():
    fig = _figures()
    entry = {"command": ["x"], "date": "d", "measured": {"cpu_model": "CPU Z", "cpus": 2}}
    seven = {"single": {"passed": 6, "runs": 7}}
    text = fig.render("engine", {"ctrl_c": {**entry, "measured": {**entry["measured"], **seven}}})
    assert "| 6/7 |" in text and "/10" not in text
    # a comparison is stated only where its interval excludes 0
    assert fig.cell({"measured": {"d": [0.2, 1.5]}}, "d", "verdict").startswith("higher")
    assert fig.cell({"measured": {"d": [-1.5, -0.2]}}, "d", "verdict").startswith("lower")
    assert fig.cell({"measured": {"d": [-0.2, 1.5]}}, "d", "verdict").startswith("not distinguishable")
    assert fig.cell({"measured": {"d": [None, None]}}, "d", "verdict") == "not measured"
    # mean [interval] (n seeds), and the point value when the interval was not measured yet
    row = "m, m_ci95, runs.# || m, runs.#", "{:.2f} [{:.2f}, {:.2f}] ({} seeds) || {:.2f} ({} seeds, no interval)"
    assert (
        fig.cell({"measured": {"m": 0.9, "m_ci95": [0.8, 1.0], "runs": [1, 2, 3]}}, *row)
        == "0.90 [0.80, 1.00] (3 seeds)"
    )
    assert fig.cell({"measured": {"m": 0.9, "runs": [1, 2]}}, *row) == "0.90 (2 seeds, no interval)"


def test_list_tables_render_one_row_per_item_or_say_not_measured():
    fig = _figures()
    assert "not measured" in fig.render("minilm_variants", {})
    variant = {"name": "int8", "runtime": "onnxruntime", "size_bytes": 20_600_000, "cos_mean": 0.99, "selected": True}
    measured = {"variants": [variant], "machine": {"cpu_model": "CPU Z", "cpus": 2, "date": "d"}}
    text = fig.render("minilm_variants", {"minilm": {"command": ["x"], "date": "d", "measured": measured}})
    assert "| int8 | onnxruntime | 20.6 MB |" in text and "**selected**" in text and "CPU Z, 2 cores" in text


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
