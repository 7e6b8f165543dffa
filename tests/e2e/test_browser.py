"""The trigger form and the grid as an operator sees them: headless Chromium (Debian's
package, /usr/bin/chromium) driven by Playwright, against the session's real Airflow stack.

Log in, open the DAG, open the trigger form, check every param's title and description in its
section (the params are read from the REST API, not hard-coded), set the batch size to 1000,
trigger, and wait until the run shows success in the grid. Screenshots go to
docs/screenshots/ and to the session's artifacts folder.

Playwright's own browser downloads are never used (`playwright install` is not run):
`scripts/install_browser.sh` installs Debian's chromium. Without it this test FAILS.
"""
from __future__ import annotations

import re
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote

import pytest

from tools.airflow_stack import DAG_ID

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DEFAULT_SECTION = "Run Parameters"  # the UI's accordion for params without a `section`
NEW_BATCH_SIZE = 1000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium. "
                    "Run `bash scripts/install_browser.sh` (apt-get install chromium chromium-driver).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed in the venv ({exc}): `make venv` installs requirements.txt")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _save(page, artifacts: Path, name: str) -> Path:
    """Always a test artifact; copied into docs/screenshots/ only when
    AUTHMIGRATE_UPDATE_SCREENSHOTS=1 (so a plain `make test` leaves the tree clean)."""
    page.screenshot(path=str(artifacts / name))
    if os.environ.get("AUTHMIGRATE_UPDATE_SCREENSHOTS") != "1":
        return artifacts / name
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name
    shutil.copyfile(artifacts / name, target)
    return target


def _tooltip_state(page, cell, task: str) -> str:
    """Hover a grid cell and read `State: ...` from its tooltip (`Task ID: <task>`)."""
    tip = page.locator('[data-scope="tooltip"][data-part="content"]').filter(
        has_text=re.compile(rf"Task ID:\s*{re.escape(task)}\s*State:"))  # matched on textContent
    for attempt in range(3):
        page.mouse.move(0, 0)
        cell.scroll_into_view_if_needed()  # the grid may still be laying out its newest column
        cell.hover()
        try:
            tip.last.wait_for(state="visible", timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - tooltips open after a delay; hover again
            if attempt == 2:
                raise
    match = re.search(r"State:\s*(\w[\w ]*)", tip.last.inner_text())
    return match.group(1).strip().lower() if match else "?"


def _widen_grid(page) -> None:
    """Give the grid more room for the screenshot: the panel separator takes arrow keys."""
    separator = page.get_by_role("separator").first
    if separator.count():
        separator.focus()
        for _ in range(2):
            page.keyboard.press("ArrowRight")


def test_trigger_form_and_grid(e2e, browser):
    from playwright.sync_api import expect

    # Playwright's `expect` waits 5 s by default, apart from the page's timeout: on a busy
    # machine the UI's first render (translations, grid) has taken longer than that.
    expect.set_options(timeout=60_000)

    e2e.unpause()  # the API test may not have run first
    params = e2e.dag_details()["params"]
    sections: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for name, spec in params.items():
        schema = spec.get("schema") or {}
        sections[schema.get("section") or DEFAULT_SECTION].append(
            (name, schema.get("title") or name, spec.get("description") or schema.get("description") or ""))
    assert "batch_size" in params, sorted(params)
    missing_docs = [name for items in sections.values() for name, title, desc in items if title == name or not desc]
    assert not missing_docs, f"params without a title or a description: {missing_docs}"

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    try:
        # --- log in (the UI redirects to the SimpleAuthManager login page)
        page.goto(f"{e2e.url}/dags/{DAG_ID}")
        page.get_by_label("Username").fill(e2e.stack.username)
        page.get_by_label("Password").fill(e2e.stack.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"**/dags/{DAG_ID}")
        expect(page.get_by_test_id("task-prepare")).to_be_visible()

        # --- the trigger form: every section, every param's title and description
        page.get_by_test_id("trigger-dag-button").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
        seen = []
        for section, items in sections.items():
            dialog.get_by_role("button", name=section, exact=True).click()  # the accordion opens one at a time
            # the section's content (its aria-labelledby id holds spaces, so no accessible name)
            region = dialog.locator(f'[data-scope="accordion"][data-part="item-content"][id$=":content:{section}"]')
            expect(region).to_be_visible()
            for name, title, description in items:
                field = region.locator('[data-scope="field"][data-part="root"]').filter(
                    has=page.locator("label", has_text=re.compile(rf"^\s*{re.escape(title)}\s*\*?\s*$")))
                expect(field, f"param {name}: field titled {title!r} in section {section!r}").to_have_count(1)
                expect(field.locator("label").first).to_be_visible()
                expect(field.get_by_text(description, exact=True),
                       f"param {name}: description in section {section!r}").to_be_visible()
                seen.append(name)
        assert sorted(seen) == sorted(params)

        # --- change the batch size, show it, trigger
        batch_section = params["batch_size"]["schema"].get("section") or DEFAULT_SECTION
        dialog.get_by_role("button", name=batch_section, exact=True).click()
        batch = dialog.locator('input[name="element_batch_size"]')
        batch.fill(str(NEW_BATCH_SIZE))
        batch.press("Tab")
        expect(batch).to_have_value(str(NEW_BATCH_SIZE))
        form_png = _save(page, e2e.artifacts, "trigger-form.png")
        dialog.get_by_role("button", name="Trigger", exact=True).click()

        # --- the UI opens the new run: wait until it ends, then read the grid
        page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+"))
        run_id = unquote(re.search(rf"/dags/{DAG_ID}/runs/([^/?#]+)", page.url).group(1))
        t0 = time.monotonic()
        header_state = page.get_by_test_id("header-card").get_by_test_id("state-badge")
        expect(header_state).to_have_text(re.compile(r"^\s*(Success|Failed)\s*$"), timeout=150_000)
        elapsed = time.monotonic() - t0
        page.reload()  # a settled grid (the live one re-lays out its newest column as the run ends)
        expect(page.get_by_test_id("header-card").get_by_test_id("state-badge")).to_be_visible()
        cells = page.locator(f'a[data-testid^="grid-{run_id}-"]')
        expect(cells.first).to_be_visible()
        page.wait_for_load_state("networkidle")
        _widen_grid(page)
        page.get_by_test_id("expand-all-button").click()  # every task, not only the groups
        expect(page.locator(f'a[data-testid^="grid-{run_id}-"][data-testid$=".load"]').first).to_be_visible()
        grid_png = _save(page, e2e.artifacts, "run-grid.png")
        prefix = f"grid-{run_id}-"
        in_grid = [t[len(prefix):] for t in cells.evaluate_all("cs => cs.map(c => c.dataset.testid)")]
        states = {}
        for task in in_grid:
            if "." not in task:  # top-level tasks and groups (a group's state sums up its tasks)
                states[task] = _tooltip_state(page, page.get_by_test_id(prefix + task), task)
        print(f"\nbrowser: run {run_id} ended in ~{elapsed:.0f}s after trigger; grid: {states}; "
              f"screenshots: {form_png}, {grid_png} (and {e2e.artifacts})")
        assert set(e2e.task_instances(run_id)) <= set(in_grid), f"tasks missing from the grid: {in_grid}"
        assert states.get("prepare") == "success" and states.get("validate") == "success", states
        assert set(states.values()) <= {"success", "skipped"}, f"grid states: {states} {e2e.where()}"

        # --- what the form sent is what the run got
        status, run = e2e.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        assert status == 200 and run["state"] == "success", (status, run)
        assert run["conf"]["batch_size"] == NEW_BATCH_SIZE, run["conf"]
        assert (run["triggered_by"], run["triggering_user_name"]) == ("ui", e2e.stack.username), run
    except BaseException:
        try:
            page.screenshot(path=str(e2e.artifacts / "failure.png"), full_page=True)
            print(f"\nbrowser failure screenshot: {e2e.artifacts / 'failure.png'}")
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        page.close()
