"""The console at /ui/ in a real browser (Debian's chromium + chromedriver, driven by selenium)
against a real worker on the local stack: runs listed, a row following the phase stream without a
reload, a run's task graph with every task's status, only the actions its phase allows, an approval
from the page, dead letters listed, shown and redriven; every request the pages make stays on
127.0.0.1. Screenshots of every page go to the test's tmp_path."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from agents.producer import EventProducer
from api.client import AsyncClient
from events.catalogue import TaskStatusChanged, make_event
from events.codec import encode
from events.model import TaskStatus
from partition.placement import partition_for
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

#: Deadlines for a hung system, not performance assertions.
WAIT = 60

PIPELINE = [
    {"id": "build", "name": "build"},
    {"id": "test", "name": "test", "depends": [{"task_id": "build", "conditions": ["on_success"]}]},
    {"id": "deploy", "name": "deploy", "needs_approval": True, "depends": [{"task_id": "test"}]},
    {
        "id": "notify",
        "name": "notify",
        "depends": [{"task_id": "test", "conditions": ["on_success", "on_failure"]}],
    },
]
LINT = [{"id": "lint", "name": "lint"}]


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/lib/chromium")
    if found is None:
        # Never a skip: the project's set-up installs it (deploy/local up, .ci/run).
        pytest.fail(
            f"{name} is missing: `apt-get install -y chromium chromium-driver` "
            "(deploy/local up and .ci/run install them)",
            pytrace=False,
        )
    return found


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-background-networking",  # no update checks, no safe-browsing lists
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(
        executable_path=_binary("chromedriver"), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        (tmp_path / "browser-console.json").write_text(
            json.dumps(driver.get_log("browser"), indent=1)
        )
        driver.quit()


def until(driver: WebDriver, what: str, pred: Callable[[WebDriver], Any]) -> Any:
    def safe(d: WebDriver) -> Any:
        try:
            return pred(d)
        except (StaleElementReferenceException, WebDriverException):
            return False  # the page redrew under us: look again

    return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(safe, f"waiting for {what}")


def row_cells(driver: WebDriver, run_id: str) -> dict[str, str]:
    row = driver.find_element(By.CSS_SELECTOR, f'#runs-body tr[data-run-id="{run_id}"]')
    names = ("counter", "name", "id", "group", "phase", "result")
    tds = row.find_elements(By.TAG_NAME, "td")
    return {n: tds[i].text for i, n in enumerate(names)}


def offered(driver: WebDriver) -> list[str]:
    """The ids of the run actions the page offers, in order."""
    buttons = driver.find_elements(By.CSS_SELECTOR, "#action-buttons button")
    return [b.get_attribute("id") or "" for b in buttons]


def dlq_rows(driver: WebDriver) -> list[tuple[str, str]]:
    """(id, reason) of every dead letter the list shows, in order."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#dlq-records-body tr")
    return [(r.get_attribute("data-id") or "", r.get_attribute("data-reason") or "") for r in rows]


def redrive_outcomes(driver: WebDriver) -> dict[str, str]:
    items = driver.find_elements(By.CSS_SELECTOR, "#dlq-redrive-result li")
    return {i.get_attribute("data-id") or "": i.get_attribute("data-outcome") or "" for i in items}


def graph_tasks(driver: WebDriver) -> dict[str, tuple[str, str]]:
    """task id → (status attribute, the status text drawn in the node)."""
    out = {}
    for g in driver.find_elements(By.CSS_SELECTOR, "#task-graph g.task"):
        text = g.find_element(By.CSS_SELECTOR, "text.task-status").text
        out[g.get_attribute("data-task-id") or ""] = (g.get_attribute("data-status") or "", text)
    return out


#: Schemes that never leave the browser (its own pages, inline data).
LOCAL_SCHEMES = frozenset({"data", "blob", "about", "chrome", "devtools"})


def requested_hosts(driver: WebDriver) -> set[str]:
    """Hosts of every request the pages made that could leave the machine (DevTools
    performance log + resource timing)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    urls += driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    hosts = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in LOCAL_SCHEMES:
            hosts.add(f"{parts.scheme}://{parts.hostname}")
    return hosts


def script_errors(driver: WebDriver) -> list[str]:
    """Errors the pages' scripts raised (answers with an error status are the network's)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("source") == "javascript"]


async def finish_tasks(kafka: str, topic: str, run_id: str, tasks: list[str], tag: str) -> None:
    """What an executor does: each task running, then success, appended to the log."""
    async with EventProducer(kafka, topic) as executor:
        for i, task in enumerate(tasks):
            for j, status in enumerate((TaskStatus.RUNNING, TaskStatus.SUCCESS)):
                event = TaskStatusChanged(task_id=task, status=status)
                eid = f"{tag}-{run_id}-{i}-{j}"
                at = 1_780_000_000_000 + i * 10 + j
                await executor.append([make_event(event, id=eid, run_id=run_id, at=at)])


async def test_the_console_in_a_real_browser(
    kafka_bootstrap: str,
    etcd_endpoint: str,
    unique: str,
    tmp_path: Path,
    browser: WebDriver,
) -> None:
    # The scheduler off: the test starts runs itself, from the API and from the page.
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        max_running_per_group=0,
    )
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    group = f"/project/{unique}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        await wait_healthy(url, within=120)
        async with AsyncClient(url) as client:
            pipeline = (await client.create_run(group=f"{group}/branch/main", name="pipeline", tasks=PIPELINE, environment={"DEPLOY_KEY": "s3cr3t-value"}, annotations={"commit": "4f2a9c1"})).run  # fmt: skip
            lint = (await client.create_run(group=f"{group}/branch/dev", name="lint", tasks=LINT)).run  # fmt: skip

            # ---- Runs: both listed, newest first, with their number and name.
            browser.get(f"{url}/ui/#/runs?group={group}")
            until(browser, "the phase stream", lambda d: d.find_element(By.ID, "stream-state").text == "live")  # fmt: skip
            until(browser, "both runs listed with their names", lambda d: row_cells(d, lint.id)["name"] == "lint" and row_cells(d, pipeline.id)["name"] == "pipeline")  # fmt: skip
            ids = [r.get_attribute("data-run-id") for r in browser.find_elements(By.CSS_SELECTOR, "#runs-body tr")]  # fmt: skip
            assert ids == [lint.id, pipeline.id]  # newest first
            cells = row_cells(browser, lint.id)
            assert (cells["phase"], cells["result"]) == ("queued", "unknown")
            assert cells["counter"] == f"#{lint.counter}" or lint.counter == 0
            browser.execute_script("window.__notReloaded = true")

            # ---- The row follows the stream: started through the API, finished through the log.
            await client.start(lint.id)
            until(browser, "lint's row to say running", lambda d: row_cells(d, lint.id)["phase"] == "running")  # fmt: skip
            await finish_tasks(s.kafka, s.topic_events, lint.id, ["lint"], "exec")
            until(browser, "lint's row to say finished / success", lambda d: (row_cells(d, lint.id)["phase"], row_cells(d, lint.id)["result"]) == ("finished", "success"))  # fmt: skip
            assert browser.execute_script("return window.__notReloaded === true"), "page reloaded"
            browser.save_screenshot(str(shots / "runs.png"))

            # ---- A run: started from the page, its tasks finished through the log.
            # The run page's 5 s re-read is turned off: what it shows after the tasks end (no
            # phase change) comes from its ready-task stream alone.
            browser.execute_script("window.setInterval = () => 0")
            browser.find_element(By.LINK_TEXT, pipeline.id).click()
            until(browser, "the run page", lambda d: d.find_element(By.ID, "run-id").text == pipeline.id)  # fmt: skip
            # Only what the phase allows is offered: queued → start, cancel; running → stop.
            assert offered(browser) == ["action-start", "action-cancel"]
            browser.find_element(By.ID, "action-start").click()
            until(browser, "the run to be running", lambda d: d.find_element(By.ID, "run-phase").text == "running")  # fmt: skip
            until(browser, "only stop offered", lambda d: offered(d) == ["action-stop"])

            await finish_tasks(s.kafka, s.topic_events, pipeline.id, ["build", "test"], "exec")

            async def deploy_waits() -> bool:
                run = (await client.get_run(pipeline.id)).run
                by_id = {t.id: t for t in run.tasks}
                return by_id["test"].status == "success" and by_id["deploy"].waiting_approval

            await wait_until(deploy_waits, within=WAIT, what="deploy to wait for approval")
            # No reload, no re-read by timer: the page reads the run again on its task.ready
            # events (GET /api/v1/runs/tasks/events) as on its phase changes.
            until(browser, "notify shown ready", lambda d: len(graph_tasks(d)) == 4 and graph_tasks(d)["notify"] == ("ready", "ready"))  # fmt: skip
            drawn = graph_tasks(browser)
            assert drawn["build"] == ("success", "success")
            assert drawn["test"] == ("success", "success")
            assert drawn["deploy"] == ("waitingapproval", "waiting for approval")
            assert drawn["notify"] == ("ready", "ready")
            labels = {
                tuple(c.strip() for c in e.text.split(","))
                for e in browser.find_elements(By.CSS_SELECTOR, "#task-graph .edge-label")
            }
            assert labels == {("on_success",), ("on_success", "on_failure")}
            edges = browser.find_elements(By.CSS_SELECTOR, "#task-graph g.edge")
            assert sorted((e.get_attribute("data-from"), e.get_attribute("data-to")) for e in edges) == [
                ("build", "test"), ("test", "deploy"), ("test", "notify"),
            ]  # fmt: skip
            marks = browser.find_element(By.CSS_SELECTOR, '#task-graph g[data-task-id="deploy"] .task-marks').text  # fmt: skip
            assert "needs approval" in marks
            assert "DEPLOY_KEY" in browser.find_element(By.ID, "environment").text
            assert "s3cr3t-value" not in browser.page_source  # keys only, never values
            assert "4f2a9c1" in browser.find_element(By.ID, "annotations").text
            history = browser.find_element(By.ID, "history").text
            assert "History not available" in history or "run.created" in history, history
            browser.save_screenshot(str(shots / "run.png"))

            # ---- Approve from the page: deploy becomes approved and ready.
            browser.find_element(By.CSS_SELECTOR, 'button.approve[data-task-id="deploy"]').click()
            until(browser, "deploy to be ready", lambda d: graph_tasks(d)["deploy"] == ("ready", "ready"))  # fmt: skip
            marks = browser.find_element(By.CSS_SELECTOR, '#task-graph g[data-task-id="deploy"] .task-marks').text  # fmt: skip
            assert "approved" in marks
            deploy = next(t for t in (await client.get_run(pipeline.id)).run.tasks if t.id == "deploy")  # fmt: skip
            assert deploy.approved
            assert not deploy.waiting_approval
            browser.save_screenshot(str(shots / "run-approved.png"))

            # ---- Dead letters: counts from /metrics, after one record the worker cannot read.
            producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(s.topic_events, b'{"type": "run.created", oops')
            finally:
                await producer.stop()

            async def counted() -> bool:
                async with httpx.AsyncClient() as h:
                    text = (await h.get(f"{url}/metrics")).text
                return 'runstream_dead_letters_total{reason="invalid_json"} 1.0' in text

            await wait_until(counted, within=WAIT, what="the dead letter on /metrics")
            # A record without a key on a partition that is not its run's: a dead letter that
            # redrive sends where it belongs (keyed by its run id).
            home = partition_for(lint.id, s.partitions)
            stray = make_event(TaskStatusChanged(task_id="lint", status=TaskStatus.SUCCESS), id="ui-redrive-me", run_id=lint.id, at=1_780_000_000_999)  # fmt: skip
            producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(s.topic_events, encode(stray), partition=(home + 1) % s.partitions)  # fmt: skip
            finally:
                await producer.stop()
            browser.get(f"{url}/ui/#/dlq")

            def counts_with_no_key(d: WebDriver) -> str | bool:
                text = d.find_element(By.ID, "dlq-table").text
                return text if "no_key" in text else False

            table = until(browser, "the counts", counts_with_no_key)
            assert "invalid_json 1" in table, table
            assert "Total 2" in table, table

            # ---- The records: listed newest first, with their reasons.
            until(browser, "both dead letters listed", lambda d: len(dlq_rows(d)) == 2)
            rows = dlq_rows(browser)
            assert [reason for _, reason in rows] == ["no_key", "invalid_json"]
            (no_key, _), (bad_json, _) = rows
            browser.save_screenshot(str(shots / "dead-letters.png"))

            # ---- One shown: headers, reason, the value as JSON text or base64, decoded events.
            browser.find_element(By.LINK_TEXT, no_key).click()
            until(browser, "the dead letter", lambda d: d.find_element(By.ID, "dlq-reason").text == "no_key")  # fmt: skip
            assert browser.find_element(By.ID, "dlq-value-encoding").text == "(UTF-8 JSON)"
            assert "ui-redrive-me" in browser.find_element(By.ID, "dlq-value").text
            assert "ui-redrive-me" in browser.find_element(By.ID, "dlq-decoded").text
            headers = browser.find_element(By.ID, "dlq-headers").text
            assert "runstream-error" in headers
            assert "no_key" in headers
            browser.save_screenshot(str(shots / "dead-letter.png"))
            browser.get(f"{url}/ui/#/dlq/{bad_json}")
            until(browser, "the undecodable one", lambda d: d.find_element(By.ID, "dlq-reason").text == "invalid_json")  # fmt: skip
            assert browser.find_element(By.ID, "dlq-value-encoding").text == "(base64)"
            raw = base64.b64decode(browser.find_element(By.ID, "dlq-value").text)
            assert raw == b'{"type": "run.created", oops'
            assert browser.find_element(By.ID, "dlq-decode-error").text

            # ---- Redrive from the list: a dry run says what would happen, then it happens.
            browser.get(f"{url}/ui/#/dlq")
            until(browser, "the list again", lambda d: len(dlq_rows(d)) == 2)
            for box in browser.find_elements(By.CSS_SELECTOR, "#dlq-records-body input[type=checkbox]"):  # fmt: skip
                box.click()
            browser.find_element(By.ID, "dlq-redrive-dry").click()
            until(browser, "the dry run", lambda d: d.find_element(By.ID, "dlq-redrive-counts").text == "1 would be redriven, 1 skipped")  # fmt: skip
            assert redrive_outcomes(browser) == {no_key: "would_redrive", bad_json: "skipped"}

            async def history_ids() -> list[str]:
                async with httpx.AsyncClient() as h:
                    got = await h.get(f"{url}/api/v1/runs/{lint.id}/history")
                return [e["event_id"] for e in got.json()["events"]]

            assert "ui-redrive-me" not in await history_ids()  # a dry run sends nothing
            browser.find_element(By.ID, "dlq-redrive-selected").click()
            until(browser, "the redrive", lambda d: d.find_element(By.ID, "dlq-redrive-counts").text == "1 redriven, 1 skipped")  # fmt: skip
            assert redrive_outcomes(browser) == {no_key: "redriven", bad_json: "skipped"}
            browser.save_screenshot(str(shots / "dead-letters-redriven.png"))

            async def redriven() -> bool:
                return "ui-redrive-me" in await history_ids()

            await wait_until(redriven, within=WAIT, what="the redriven event at its run's owner")

            # ---- A phone's width: the runs page still reads.
            browser.set_window_size(390, 844)
            browser.get(f"{url}/ui/#/runs?group={group}")
            until(browser, "the runs at phone width", lambda d: row_cells(d, pipeline.id)["phase"] == "running")  # fmt: skip
            browser.save_screenshot(str(shots / "runs-phone.png"))

            # ---- Nothing left 127.0.0.1, and no script failed.
            assert requested_hosts(browser) == {"http://127.0.0.1"}
            assert script_errors(browser) == []
    finally:
        worker.stop()


async def test_the_console_with_an_api_token(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path, browser: WebDriver
) -> None:
    """The pages load without the token; data calls are refused until it is given, then carry
    it, the phase stream included (fetch(), since an EventSource cannot send it)."""
    token = "console-secret"
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        api_token=token,
        max_running_per_group=0,
    )
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    group = f"/project/{unique}"
    try:
        await wait_healthy(url, within=120)
        async with AsyncClient(url, token=token) as client:
            run = (await client.create_run(group=f"{group}/branch/main", name="ci", tasks=LINT)).run  # fmt: skip
            browser.get(f"{url}/ui/#/runs?group={group}")
            refused = until(browser, "the 401", lambda d: "401" in d.find_element(By.ID, "runs-status").text and d.find_element(By.ID, "runs-status").text)  # fmt: skip
            assert "Authorization: Bearer" in refused
            browser.find_element(By.ID, "token").send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
            until(browser, "the run listed", lambda d: row_cells(d, run.id)["name"] == "ci")
            until(browser, "the phase stream", lambda d: d.find_element(By.ID, "stream-state").text == "live")  # fmt: skip
            assert browser.execute_script("return sessionStorage.getItem('runstream.token')") == token  # fmt: skip
            await client.start(run.id)
            until(browser, "the row to say running", lambda d: row_cells(d, run.id)["phase"] == "running")  # fmt: skip
            browser.save_screenshot(str(tmp_path / "runs-with-token.png"))
            assert requested_hosts(browser) == {"http://127.0.0.1"}
            assert script_errors(browser) == []
    finally:
        worker.stop()
