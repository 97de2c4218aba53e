"""Every figure in the README is the one a benchmark script wrote to docs/figures.json."""

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


def test_readme_tables_match_figures_json():
    fig = _figures()
    readme = (ROOT / "README.md").read_text()
    for table in fig.TABLES:
        assert f"<!-- figures:{table} -->" in readme and f"<!-- /figures:{table} -->" in readme, table
    assert fig.rewrite(readme, fig.load()) == readme, "README figures are stale: run `make figures`"


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
