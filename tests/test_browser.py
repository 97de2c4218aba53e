"""The MLflow pages a user reviews, in a real browser: a small pipeline (``lineage_run``) runs into a
sqlite store, a real ``mlflow server`` serves it on 127.0.0.1, and Playwright drives Debian's
Chromium, headless, with a fresh profile each time (what a new browser sees). It opens the
experiment, the parent run through the link the console printed, the run's artifacts, the
registered version and the experiment's models, and asserts what a user must see there.
Screenshots go to the test's tmp dir."""

from __future__ import annotations

import io
import re
import shutil
import threading

import pytest
from lineage_run import REGISTRY, run_lineage
from mlflow.tracking import MlflowClient
from rich.console import Console
from servers import MlflowServer

from pipelines.run import session

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("ray_local")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 60_000


def _printed_link(out) -> str:
    """The URL on the console's ``Open it:`` line."""
    console = Console(record=True, width=1000, file=io.StringIO())
    session.summary(out, console)
    line = next(ln for ln in console.export_text().splitlines() if ln.startswith("Open it:"))
    return re.findall(r"https?://\S+", line)[-1]


def _see(page, *texts: str) -> None:
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(timeout=WAIT_MS)


def _start_in_background(server: MlflowServer) -> tuple[threading.Thread, list]:
    """Start ``server`` while the pipeline runs (its start is mostly imports); errors are kept."""
    errors: list = []

    def start() -> None:
        try:
            server.start()
        except Exception as e:  # noqa: BLE001 - reported by the test after join()
            errors.append(e)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread, errors


def test_the_mlflow_pages_show_what_a_user_reviews(workdir, tmp_path):
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # the store exists before the server opens it
    server = MlflowServer(workdir, uri)
    thread, errors = _start_in_background(server)
    try:
        out = run_lineage(workdir, uri)
        thread.join(timeout=180)
        assert not errors and not thread.is_alive(), errors
        _browse(out, server, tmp_path)
    finally:
        thread.join(timeout=180)
        server.stop()
    assert all((tmp_path / f"{n}.png").stat().st_size > 10_000 for n in ("experiment", "run", "version", "models"))


def _browse(out, server: MlflowServer, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    client = MlflowClient(tracking_uri=out.uri)
    run = client.get_run(out.run_id)
    version = client.get_model_version_by_alias(REGISTRY, "candidate")
    digest = version.tags["dataset_digest"]
    link = _printed_link(out)
    eid, rid = out.experiment_id, out.run_id
    assert link == f"http://127.0.0.1:5000/#/experiments/{eid}/runs/{rid}?workflowType=machine_learning"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:

            def fresh_page(path: str):
                page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
                page.goto(server.url + path)
                return page

            # the experiment, in a new browser: its training runs, with the Dataset column
            page = fresh_page(f"/#/experiments/{eid}?workflowType=machine_learning")
            _see(page, run.info.run_name, f"digits ({digest})")
            assert f"/experiments/{eid}/runs" in page.url and "workflowType=machine_learning" in page.url
            page.screenshot(path=str(tmp_path / "experiment.png"))

            # the parent run, from the printed link: the report as description, headline metrics,
            # the dataset, the registered version
            page = fresh_page(link.removeprefix("http://127.0.0.1:5000"))
            _see(page, run.info.run_name, "Compression report: digits", "selected.test_acc")
            _see(page, "selected_vs_teacher.size_reduction", f"digits ({digest})", REGISTRY)
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

            # the run's artifacts: pareto.png opens as an image
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text("pareto.png", exact=True).first.click()
            image = page.locator('img[src^="blob:"]').first
            image.wait_for(timeout=WAIT_MS)
            page.wait_for_function("img => img.complete && img.naturalWidth > 200", arg=image.element_handle())
            page.screenshot(path=str(tmp_path / "artifacts.png"))

            # the registered version: its alias, the report as description, its tags
            page = fresh_page(f"/#/models/{REGISTRY}/versions/{version.version}?workflowType=machine_learning")
            _see(page, "candidate", "Compression report: digits", version.tags["recipe"], digest)
            _see(page, "test_acc", "throughput_b256", "latency_ms_p50_b1", "hardware", "git_commit")
            page.screenshot(path=str(tmp_path / "version.png"), full_page=True)

            # the experiment's models: every benchmarked candidate
            page = fresh_page(f"/#/experiments/{eid}/models?workflowType=machine_learning")
            _see(page, "teacher", "prune[amount=0_3]", "prune[amount=0_5]", "quantize")
            page.screenshot(path=str(tmp_path / "models.png"))
        finally:
            browser.close()
