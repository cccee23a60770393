"""The console in a real headless browser (Debian's chromium and chromedriver), with every other host unreachable.

The page must load with nothing from elsewhere, list the tasks, answer a prediction typed into it
with the label the API gives, upload and delete with the admin token, show KEN_viz images and
live figures; /docs must render Swagger UI from this server's own assets.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_TOKEN, ADMIN_TOKEN = "browser-api-token", "browser-admin-token"
WAIT_S = 180  # a bound for one page step on a loaded machine (load 20 seen on 2 cores); not a timing assertion
TEXT = "the striker scored a late goal"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "no /usr/bin/chromium and /usr/bin/chromedriver: install Debian's chromium and chromium-driver packages "
            "(scripts/test.sh does so when it runs as root)"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Every host but the service's loopback address fails to resolve: the page must not need any.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> ServiceThread:
    service = serve(make_settings(api_token=API_TOKEN, admin_token=ADMIN_TOKEN))
    with service.client(ADMIN_TOKEN) as client:
        for task, blob in (("news", task_files.news), ("five", task_files.five)):
            assert client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET).status_code == 201
    return service


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (from chromedriver's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_only_this_server(urls: list[str], base: str) -> None:
    """No request over the network but to ``base`` (the browser's own chrome:// pages are not the network)."""
    over_network = [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))]
    assert any(url.startswith(base + "/") for url in over_network), "the log shows no request at all"
    elsewhere = [url for url in over_network if not url.startswith(base + "/")]
    assert not elsewhere, f"the page asked other hosts for: {elsewhere}"


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """``condition``'s first truthy answer; elements the page re-rendered meanwhile are looked up again."""
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, message=f"waiting for {what}")


def task_rows(driver: Any) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")
    return {row.get_attribute("data-task"): row.text for row in rows}


def text_of(driver: Any, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_the_console_in_a_browser(browser: Any, service: ServiceThread, task_files: TaskFiles, tmp_path: Path) -> None:
    requested_urls(browser)  # what the browser loaded for itself on start-up
    browser.get(service.url + "/")
    # Without the token the API refuses, and the page says so.
    wait_for(browser, lambda d: "401" in text_of(d, "tasks-status"), "the 401 shown without a token")
    for field, token in (("api-token", API_TOKEN), ("admin-token", ADMIN_TOKEN)):
        browser.find_element(By.ID, field).send_keys(token)
    browser.find_element(By.ID, "play-text").click()  # leaving the fields fires their change event
    listed = wait_for(browser, lambda d: len(rows := task_rows(d)) == 2 and rows, "the task rows")
    assert sorted(listed) == ["five", "news"]
    assert "sequence-classification" in listed["news"] and "ken" in listed["news"]  # type and method from the manifest
    assert "backbone:" in text_of(browser, "backbone") and "parameters" in text_of(browser, "backbone")

    # A prediction typed into the page shows the label the API gives for the same text.
    Select(browser.find_element(By.ID, "play-task")).select_by_value("news")
    browser.find_element(By.ID, "play-text").send_keys(TEXT)
    browser.find_element(By.ID, "play-send").click()
    shown = wait_for(browser, expected_conditions.visibility_of_element_located((By.ID, "play-top-label")), "a label")
    with service.client(API_TOKEN) as client:
        answer = client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).json()
    assert shown.text == answer["predictions"][0]["labels"][0]["label"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#play-result ol.scores li")) == 3  # every label, scored

    # Upload with the admin token; the same bytes again keep their version; then delete (two clicks).
    path = tmp_path / "copy.safetensors"
    path.write_bytes(task_files.news)
    browser.find_element(By.ID, "upload-task").send_keys("copy")
    browser.find_element(By.ID, "upload-file").send_keys(str(path))
    browser.find_element(By.ID, "upload-send").click()
    wait_for(browser, lambda d: "copy stored as version 1" in text_of(d, "upload-status"), "the upload")
    browser.find_element(By.ID, "upload-send").click()
    wait_for(browser, lambda d: "unchanged: already version 1" in text_of(d, "upload-status"), "the re-upload")
    delete = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-task="copy"] button.danger'), "row")
    delete.click()
    delete.click()
    wait_for(browser, lambda d: "deleted copy" in text_of(d, "tasks-status"), "the deletion")
    with service.client(API_TOKEN) as client:
        assert [m["task"] for m in client.get("/v1/subnetworks").json()["subnetworks"]] == ["five", "news"]

    # KEN_viz images of a task, rendered by the server.
    browser.find_element(By.CSS_SELECTOR, 'tr[data-task="news"] button:not(.danger)').click()
    wait_for(browser, lambda d: "views" in text_of(d, "viz-status"), "the images")
    images = browser.find_elements(By.CSS_SELECTOR, "#viz-images img")
    assert len(images) >= 3
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)

    # Live figures: the swaps the prediction made show up from /metrics.
    wait_for(browser, lambda d: text_of(d, "live-swaps") not in ("", "–", "0"), "the live swap count")
    assert int(text_of(browser, "live-swaps").replace(",", "")) >= 1

    assert_only_this_server(requested_urls(browser), service.url)
    console_errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert all("401" in entry["message"] for entry in console_errors), console_errors  # only the refused first load


def test_swagger_ui_renders_offline(browser: Any, service: ServiceThread) -> None:
    requested_urls(browser)
    browser.get(service.url + "/docs")
    title = wait_for(
        browser, expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")), "UI"
    )
    assert "ken-serve" in title.text
    operations = browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")
    assert len(operations) >= 10
    assert_only_this_server(requested_urls(browser), service.url)
