"""The ``/ui/`` job browser in a real headless browser: Debian's chromium driven by Playwright,
against a real uvicorn server of the API on PostgreSQL, with a real worker running the jobs.

Each test saves screenshots under ``.fairlane/screenshots/`` (the path is printed at the end
of the run): look at them after a change to the page. Waits are Playwright's (``expect``
retries until the page shows what it should); nothing here measures time.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

import fairlane
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore
from fairlane.ledger.jobs import JobNotFound

from .test_api_events import serving
from .worker_processes import REPO_ROOT

SCREENSHOTS = REPO_ROOT / ".fairlane" / "screenshots"
#: How long Playwright waits for the page to show something (generous: CI machines are shared).
PAGE_TIMEOUT_MS = 20_000
#: A delay that keeps a job waiting in the ledger for the whole test.
WAITING_MS = 600_000


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    """PostgreSQL only: the page shows what the API answers, and the API tests cover SQLite."""
    return postgres_url


@pytest.fixture(scope="session")
def screenshot_dir(request: pytest.FixtureRequest) -> Path:
    """Where the screenshots go; the path is printed when the run ends (after output capture)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        request.config.add_cleanup(
            lambda: reporter.write_line(
                f"/ui/ screenshots: {SCREENSHOTS} ({len(list(SCREENSHOTS.glob('*.png')))} files)"
            )
        )
    return SCREENSHOTS


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's chromium under Playwright (its own browser download cannot work here)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "Debian's chromium is not installed, and the /ui/ browser tests need it: run `make tools` "
            "(it runs `apt-get install chromium`). Not `playwright install`: that download cannot work here."
        )
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@dataclasses.dataclass
class Browsing:
    """One browser tab on the page, with every URL it requested and every refusal it logged."""

    page: Page
    url: str
    shots: Path
    requested: list[str] = dataclasses.field(default_factory=list)
    refusals: list[str] = dataclasses.field(default_factory=list)

    def watch(self) -> None:
        """Record the URLs the page requests, its script errors and its policy refusals."""
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("pageerror", lambda error: self.refusals.append(f"script error: {error}"))
        self.page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        if "Refused" in message.text:  # how Chromium reports what a Content-Security-Policy blocked
            self.refusals.append(message.text)

    def sign_in(self, key: str) -> None:
        """Open /ui/ and sign in with ``key``, from the keyboard."""
        self.page.goto(f"{self.url}/ui/")
        field = self.page.get_by_label("API key")
        field.fill(key)
        field.press("Enter")
        expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()

    def go(self, fragment: str) -> None:
        """Show a view of the page (``#/jobs/<id>``, ``#/dead-letters``…) as a link would."""
        self.page.evaluate("fragment => { location.hash = fragment; }", fragment)

    @property
    def rows(self) -> Locator:
        return self.page.locator("tbody tr")

    def row_ids(self) -> list[str]:
        return list(self.rows.evaluate_all("rows => rows.map(row => row.dataset.jobId)"))

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@pytest.fixture
def server_url(app: App) -> Iterator[str]:
    """This test's API (with /ui/) on a real uvicorn server."""
    from fairlane.api import create_api

    with serving(create_api(app)) as url:
        yield url


@pytest.fixture
def browsing(chromium: Browser, server_url: str, screenshot_dir: Path) -> Iterator[Browsing]:
    """A fresh tab (its own session storage) on this test's server; afterwards, the page must
    have had no script error and no Content-Security-Policy refusal."""
    context = chromium.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    tab = Browsing(page, server_url, screenshot_dir)
    tab.watch()
    yield tab
    assert tab.refusals == []
    assert context.cookies() == []  # the key lives in session storage only
    context.close()


@pytest.fixture
def make_key(app: App) -> Callable[..., str]:
    """Create an API key in this test's ledger: ``make_key("acme")``, ``make_key("ops", admin=True)``."""

    def _create(tenant: str, *, admin: bool = False) -> str:
        return ApiKeyStore(app.engine).create(tenant, admin=admin)[1]

    return _create


@pytest.fixture
def acme() -> str:
    """A tenant no other test uses (the PostgreSQL ledger is shared by the test run)."""
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def globex() -> str:
    """Another tenant of its own."""
    return f"globex-{uuid.uuid4().hex[:8]}"


def _submit(url: str, key: str, body: dict[str, Any]) -> str:
    response = httpx2.post(f"{url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_job_list_filters_and_pages_through_one_tenants_jobs(
    app: App, browsing: Browsing, make_key: Callable[..., str], queue: str, acme: str, globex: str
) -> None:
    # Given a tenant with 23 waiting exports (one cancelled) and 2 waiting imports (one urgent),
    # and another tenant's waiting export
    @fairlane.actor(queue_name=queue)
    def export_report(n: int) -> None: ...

    @fairlane.actor(queue_name=queue)
    def import_rows(n: int) -> None: ...

    key = make_key(acme)
    url = browsing.url
    waiting = {"delay_ms": WAITING_MS}
    exports = [_submit(url, key, {"actor": "export_report", "args": [n], **waiting}) for n in range(23)]
    plain_import = _submit(url, key, {"actor": "import_rows", "args": [1], **waiting})
    urgent_import = _submit(url, key, {"actor": "import_rows", "args": [2], "priority": "urgent", **waiting})
    theirs = _submit(url, make_key(globex), {"actor": "export_report", "args": [0], **waiting})
    app.jobs.cancel(exports[5])
    mine = {*exports, plain_import, urgent_import}

    # When the tenant signs in
    browsing.sign_in(key)
    page = browsing.page

    # Then the page lists the tenant's 25 jobs, newest first, and nothing of the other tenant
    expect(browsing.rows).to_have_count(25)
    assert browsing.row_ids()[0] == urgent_import
    assert set(browsing.row_ids()) == mine
    assert theirs not in page.content()
    expect(page.get_by_label("Tenant")).to_have_count(0)  # a tenant key lists its own tenant only
    browsing.screenshot("jobs-list")

    # When an actor is typed in the filters and Enter pressed
    page.get_by_label("Actor").fill("import_rows")
    page.get_by_label("Actor").press("Enter")

    # Then only that actor's jobs are listed
    expect(browsing.rows).to_have_count(2)
    assert set(browsing.row_ids()) == {plain_import, urgent_import}

    # When the urgent lane is chosen as well
    page.get_by_label("Priority").select_option("urgent")
    page.get_by_label("Actor").press("Enter")

    # Then only the urgent import is left
    expect(browsing.rows).to_have_count(1)
    assert browsing.row_ids() == [urgent_import]
    expect(browsing.rows.first.locator(".badge")).to_have_text("pending")

    # When the filters are cleared and the cancelled state chosen
    page.get_by_role("link", name="Clear").click()
    expect(browsing.rows).to_have_count(25)
    page.get_by_label("State").select_option("cancelled")
    page.get_by_role("button", name="Apply filters").click()

    # Then the one cancelled job is listed, with its badge
    expect(browsing.rows).to_have_count(1)
    assert browsing.row_ids() == [exports[5]]
    expect(browsing.rows.first.locator(".badge")).to_have_text("cancelled")

    # When pages of 20 are asked for and the next page followed
    page.get_by_role("link", name="Clear").click()
    expect(browsing.rows).to_have_count(25)
    page.get_by_label("Per page").select_option("20")
    page.get_by_role("button", name="Apply filters").click()
    expect(browsing.rows).to_have_count(20)
    first_page = browsing.row_ids()
    page.get_by_role("link", name="Next page").click()

    # Then the second page holds the other 5 jobs, and is the last
    expect(browsing.rows).to_have_count(5)
    assert set(first_page) | set(browsing.row_ids()) == mine
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    expect(page.get_by_role("link", name="First page")).to_be_visible()

    # And the key went into no URL the page requested
    assert browsing.requested and all(key not in requested for requested in browsing.requested)


def test_job_detail_shows_progress_live_and_downloads_the_result(
    app: App,
    browsing: Browsing,
    make_key: Callable[..., str],
    queue: str,
    worker: Callable[..., Any],
    acme: str,
) -> None:
    # Given an actor that reports step 1, then 2, of 3, each until the test has seen it on the page
    seen = [threading.Event(), threading.Event()]

    @fairlane.actor(queue_name=queue)
    def ingest_batch() -> dict[str, int]:
        for step, gate in enumerate(seen, start=1):
            while not gate.wait(0.05):
                fairlane.progress(step, 3, message=f"record {step} of 3")
        fairlane.progress(3, 3)
        return {"stored": 3}

    key = make_key(acme)
    job_id = _submit(browsing.url, key, {"actor": "ingest_batch"})
    browsing.sign_in(key)
    page = browsing.page

    with worker(threads=2):
        # When the job is opened from the list, from the keyboard, while a worker runs it
        page.get_by_role("link", name=f"Job {job_id}").press("Enter")
        bar = page.locator("#job-progress")
        text = page.locator("#progress-text")

        # Then its progress bar moves with each step the job reports
        expect(text).to_have_text("1 of 3 (33.3%)")
        expect(bar).to_have_js_property("value", 33.3)
        expect(page.locator(".summary .badge")).to_have_text("running")
        expect(page.get_by_text("record 1 of 3")).to_be_visible()
        seen[0].set()
        expect(text).to_have_text("2 of 3 (66.7%)")
        expect(bar).to_have_js_property("value", 66.7)
        browsing.screenshot("job-progress")
        seen[1].set()

        # And it ends succeeded at 100%
        expect(page.locator(".summary .badge")).to_have_text("succeeded")
        expect(text).to_have_text("3 of 3 (100%)")
        expect(bar).to_have_js_property("value", 100)

    # When its result is downloaded
    with page.expect_download() as download:
        page.get_by_role("button", name="Download result").click()

    # Then the file is the job's result, named after the job
    assert download.value.suggested_filename == f"{job_id}.json"
    assert json.loads(Path(download.value.path()).read_text()) == {"stored": 3}
    expect(page.get_by_role("button", name="Cancel job…")).to_have_count(0)
    browsing.screenshot("job-succeeded")


def test_cancel_asks_for_confirmation_first(
    app: App, browsing: Browsing, make_key: Callable[..., str], queue: str, acme: str
) -> None:
    # Given a waiting job, open on the page
    @fairlane.actor(queue_name=queue)
    def export_report() -> None: ...

    key = make_key(acme)
    job_id = _submit(browsing.url, key, {"actor": "export_report", "delay_ms": WAITING_MS})
    browsing.sign_in(key)
    browsing.go(f"#/jobs/{job_id}")
    page = browsing.page
    expect(page.locator(".summary .badge")).to_have_text("pending")

    # When cancel is pressed (from the keyboard) and the confirmation dismissed with Escape
    page.get_by_role("button", name="Cancel job…").press("Enter")
    dialog = page.get_by_role("dialog", name="Cancel this job?")
    expect(dialog).to_be_visible()
    browsing.screenshot("cancel-confirmation")
    page.keyboard.press("Escape")

    # Then nothing is cancelled
    expect(dialog).to_be_hidden()
    assert app.jobs.get(job_id).state == "pending"

    # When cancel is pressed again and confirmed
    page.get_by_role("button", name="Cancel job…").click()
    dialog.get_by_role("button", name="Cancel job").click()

    # Then the job is cancelled, in the ledger and on the page, and cannot be cancelled again
    expect(page.locator(".summary .badge")).to_have_text("cancelled")
    assert app.jobs.get(job_id).state == "cancelled"
    expect(page.get_by_role("button", name="Cancel job…")).to_have_count(0)
    expect(page.get_by_role("status").filter(has_text="cancelled")).to_be_visible()


class Flaky:
    """An actor that fails without retries until ``healthy`` is set."""

    def __init__(self, queue: str) -> None:
        self.healthy = threading.Event()

        @fairlane.actor(queue_name=queue, max_retries=0)
        def charge(order: int) -> dict[str, int]:
            if not self.healthy.is_set():
                raise RuntimeError(f"card declined for order {order}")
            return {"order": order}


def test_dead_letters_are_requeued_and_purged_by_an_admin(
    app: App,
    browsing: Browsing,
    make_key: Callable[..., str],
    queue: str,
    worker: Callable[..., Any],
    acme: str,
) -> None:
    # Given three dead jobs of a tenant (their actor failed, with no retries)
    flaky = Flaky(queue)
    key = make_key(acme)
    dead = [_submit(browsing.url, key, {"actor": "charge", "args": [n]}) for n in (1, 2, 3)]
    page = browsing.page
    with worker(threads=2):
        for job_id in dead:
            assert fairlane.jobs.wait(job_id, timeout=30).state == "dead"

        # When an admin opens the dead letters of that tenant
        browsing.sign_in(make_key("ops", admin=True))
        page.get_by_role("link", name="Dead letters").click()
        expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
        page.get_by_label("Tenant").fill(acme)
        page.get_by_label("Tenant").press("Enter")

        # Then the three are listed, each with its error
        expect(browsing.rows).to_have_count(3)
        assert set(browsing.row_ids()) == set(dead)
        first = page.locator(f'tr[data-job-id="{dead[0]}"]')
        expect(first).to_contain_text("RuntimeError: card declined for order 1")
        browsing.screenshot("dead-letters")

        # When the first is requeued once its actor works again
        flaky.healthy.set()
        page.get_by_role("button", name=f"Requeue job {dead[0]}").click()

        # Then it leaves the list and runs to success
        expect(browsing.rows).to_have_count(2)
        assert set(browsing.row_ids()) == set(dead[1:])
        assert fairlane.jobs.wait(dead[0], timeout=30).state == "succeeded"

    # When a purge of everything older than 0 minutes is asked for, then kept
    page.get_by_label("Older than (minutes)").fill("0")
    page.get_by_role("button", name="Purge…").click()
    dialog = page.get_by_role("dialog", name="Purge dead letters?")
    expect(dialog).to_contain_text(f"of tenant {acme}")
    browsing.screenshot("purge-confirmation")
    dialog.get_by_role("button", name="Keep them").click()

    # Then both dead letters are still there
    expect(dialog).to_be_hidden()
    expect(browsing.rows).to_have_count(2)

    # When the purge is asked for again and confirmed
    page.get_by_role("button", name="Purge…").click()
    dialog.get_by_role("button", name="Purge").click()

    # Then the list is empty and the ledger holds neither job
    expect(page.get_by_text("No dead letters.")).to_be_visible()
    for job_id in dead[1:]:
        with pytest.raises(JobNotFound):
            app.jobs.get(job_id)


def test_a_dead_jobs_page_shows_its_error_and_traceback(
    browsing: Browsing, make_key: Callable[..., str], queue: str, worker: Callable[..., Any], acme: str
) -> None:
    # Given a dead job
    Flaky(queue)
    key = make_key(acme)
    job_id = _submit(browsing.url, key, {"actor": "charge", "args": [7]})
    with worker(threads=1):
        assert fairlane.jobs.wait(job_id, timeout=30).state == "dead"

    # When its tenant opens it from the dead-letter list
    browsing.sign_in(key)
    page = browsing.page
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    expect(page.get_by_text("Requeue and purge need an admin key.")).to_be_visible()
    page.get_by_role("link", name=f"Job {job_id}").click()

    # Then the page shows the error and its traceback, and offers neither cancel nor a result
    error = page.get_by_role("region", name="Error")
    expect(error).to_contain_text("RuntimeError: card declined for order 7")
    expect(error.locator("pre")).to_contain_text("Traceback")
    expect(page.locator(".summary .badge")).to_have_text("dead")
    for action in ("Cancel job…", "Download result"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    browsing.screenshot("job-dead")


def test_a_tenant_key_never_sees_another_tenants_job(
    browsing: Browsing, make_key: Callable[..., str], queue: str, acme: str, globex: str
) -> None:
    # Given a waiting job of each of two tenants
    @fairlane.actor(queue_name=queue)
    def export_report() -> None: ...

    acme_key = make_key(acme)
    mine = _submit(browsing.url, acme_key, {"actor": "export_report", "delay_ms": WAITING_MS})
    theirs = _submit(browsing.url, make_key(globex), {"actor": "export_report", "delay_ms": WAITING_MS})
    page = browsing.page

    # When one tenant signs in and opens the other's job by its id
    browsing.sign_in(acme_key)
    expect(browsing.rows).to_have_count(1)
    assert browsing.row_ids() == [mine]
    browsing.go(f"#/jobs/{theirs}")

    # Then the page answers as for a job that does not exist
    expect(page.get_by_role("alert")).to_contain_text(f"no job with id '{theirs}'")
    expect(page.get_by_text(globex)).to_have_count(0)

    # When that tenant signs out
    page.get_by_role("button", name="Sign out").click()

    # Then the key is gone from the tab, and so are the views
    expect(page.get_by_label("API key")).to_be_focused()
    assert page.evaluate("() => sessionStorage.length") == 0
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()

    # When a key that does not exist is tried
    page.get_by_label("API key").fill("fl_00000000_not-a-key")
    page.get_by_label("API key").press("Enter")

    # Then the page says so and keeps nothing
    expect(page.get_by_role("alert")).to_have_text("This key is unknown or revoked.")
    assert page.evaluate("() => sessionStorage.length") == 0

    # When an admin signs in and filters by the other tenant
    browsing.sign_in(make_key("ops", admin=True))
    page.get_by_label("Tenant").fill(globex)
    page.get_by_label("Tenant").press("Enter")

    # Then the admin sees that tenant's job, and only it
    expect(browsing.rows).to_have_count(1)
    assert browsing.row_ids() == [theirs]
    expect(browsing.rows.first).to_contain_text(globex)
