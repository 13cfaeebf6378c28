"""The validation app in a real browser: Debian's headless Chromium driven by Selenium (chromium-driver;
nothing downloads a browser). Open the app, pick a product, forecast, open the explanation, send
feedback, check the record reached the device's SQLite store, check the browser fetched nothing
but the app and the agent on loopback, and save a screenshot (``$EDGESHIP_SCREENSHOT`` or tmp; the
README's is ``EDGESHIP_SCREENSHOT=docs/validate_app.png``). A v2 runs as shadow candidate, so the
page shows both forecasts side by side; the day asked is three days after the lag state, so the plot
shows three forecast days."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import require, wait_for
from tests.validate_kit import agent_and_app, device_feedback

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1700"]  # fmt: skip


@pytest.fixture()
def browser():
    require(Path(CHROMIUM).exists() and Path(DRIVER).exists(), "chromium / chromium-driver are not installed (scripts/test-deps.sh)")
    require(importlib.util.find_spec("selenium") is not None and importlib.util.find_spec("gradio") is not None,
            "selenium / gradio are not installed (pip install -e '.[validate,dev]')")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgeship-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def test_staff_validate_a_forecast_in_chromium(tmp_path, keys, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    with agent_and_app(tmp_path, keys, candidate={"mode": "shadow"}) as (agent, url):
        d.get(url)
        wait_for(lambda: "Live model" in _text(d, "status"), "the catalogue from the agent", 60)
        assert "Candidate (shadow)" in _text(d, "status")
        day = d.find_element(By.CSS_SELECTOR, "#date textarea, #date input")
        wait_for(lambda: day.get_attribute("value") == "2017-08-16", "the first forecast day in the form", 30)
        day.send_keys(Keys.CONTROL, "a")
        day.send_keys("2017-08-18")

        # pick a product by name (family / class shown), not by number
        box = d.find_element(By.CSS_SELECTOR, "#item input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("DAIRY")
        option = wait_for(lambda: [o for o in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li") if "DAIRY" in o.text],
                          "the DAIRY product in the list", 20)[0]  # fmt: skip
        option.click()
        d.find_element(By.CSS_SELECTOR, "#promo input").click()
        d.find_element(By.ID, "predict-btn").click()
        wait_for(lambda: "units" in _text(d, "forecast"), "the forecast", 60)
        assert "105574" in _text(d, "forecast")
        assert "tflite-fp32" in _text(d, "model") and "v1" in _text(d, "model")
        assert "2017-08-18" in _text(d, "forecast")
        side = _text(d, "candidate")  # live and candidate side by side, the live one answered (shadow)
        assert "live ← answered" in side and "candidate (shadow, 100% of traffic)" in side and "v2" in side

        # the explanation panel
        toggle = d.find_element(By.XPATH, "//*[@id='explain-panel']//button[contains(., 'Why this forecast?')]")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", toggle)

        clicked = [time.monotonic()]

        def opened() -> bool:
            buttons = [b for b in d.find_elements(By.ID, "explain-btn") if b.is_displayed()]
            if not buttons and time.monotonic() - clicked[0] > 3:  # the first click came before the page listened
                toggle.click()
                clicked[0] = time.monotonic()
            return bool(buttons)

        wait_for(opened, "the explanation panel to open", 30)
        d.find_element(By.ID, "explain-btn").click()
        wait_for(lambda: "contributions" in _text(d, "explain-text"), "the explanation", 60)

        # feedback
        d.find_element(By.XPATH, "//*[@id='verdict']//label[contains(., 'wrong')]").click()
        actual = d.find_element(By.CSS_SELECTOR, "#actual input")
        actual.clear()
        actual.send_keys("9")
        d.find_element(By.CSS_SELECTOR, "#validator textarea, #validator input").send_keys("carla")
        d.find_element(By.CSS_SELECTOR, "#comment textarea").send_keys("promo display was not set up")
        d.find_element(By.ID, "feedback-btn").click()
        wait_for(lambda: "stored on the device" in _text(d, "feedback-result"), "the feedback receipt", 60)

        rows = [r for r in device_feedback(agent) if r["validator"] == "carla"]
        assert len(rows) == 1
        r = rows[0]
        assert (r["request"]["item_nbr"], r["request"]["onpromotion"], r["verdict"], r["actual_units"]) == (105574, True, "wrong", 9)
        assert r["comment"] == "promo display was not set up" and r["model"]["version"] == 1

        shot = Path(os.environ.get("EDGESHIP_SCREENSHOT") or tmp_path / "validate_app.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        d.execute_script("window.scrollTo(0, 0)")
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        # nothing but loopback was fetched (no CDN, no fonts, no analytics)
        hosts = set()
        for entry in d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                u = urlparse(msg["params"]["request"]["url"])
                if u.scheme in ("http", "https", "ws", "wss"):
                    hosts.add(u.hostname)
        assert hosts and hosts <= {"127.0.0.1", "localhost"}, hosts
