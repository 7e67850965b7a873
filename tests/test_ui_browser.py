"""The web UI in a real browser: Chromium (Debian's package) driven by selenium through chromedriver.

The app is started on 127.0.0.1 on a free port, on the toy world with a LoRA. The test sets the prompts
and the sliders, presses Generate, waits for the images, checks that CFG's and PG's differ, that a bad
input shows the CLI's one line, and saves a screenshot of the Compare tab (STEERGUIDE_UI_SCREENSHOT=path
keeps a copy). Without Chromium it skips, except in CI (CI set), where it fails.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PROMPTS = "a sks star on a teal background\na sks star in the top left"


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if not missing:
        return
    message = f"browser test needs Debian's chromium and chromium-driver; missing {', '.join(missing)}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI installs them in .ci/run)")
    pytest.skip(message + " (apt-get install -y chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    try:
        import gradio  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs gradio (pip install -e '.[test]')")
        pytest.skip("gradio is not installed")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora
    from steerguide.toyworld import base_model_path
    from steerguide.ui.app import launch
    from steerguide.ui.studio import Studio

    lora = save_random_lora(
        load_pipeline(base_model_path()), tmp_path_factory.mktemp("browser-lora"), seed=2, std=0.1
    )
    studio = Studio(personalization=str(lora), workdir=tmp_path_factory.mktemp("browser-work"))
    port = _free_port()
    demo = launch(studio, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1700",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _field(driver, elem_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")


def _type(element, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def _set_slider(driver, elem_id: str, value: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    _type(box, f"{value:g}")
    box.send_keys(Keys.TAB)
    slider = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=range]")
    assert float(slider.get_attribute("value")) == pytest.approx(value), elem_id


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#compare-status").text.strip()


def _wait_status(driver, predicate, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = _status(driver)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"status line never matched; last: {_status(driver)!r}")


def _gallery(driver, base_url: str, method: str) -> list[np.ndarray]:
    from selenium.webdriver.common.by import By

    sources = [
        img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, f"#gallery-{method} img")
    ]
    arrays = []
    for src in dict.fromkeys(sources):  # a gallery may render a thumbnail twice
        with urllib.request.urlopen(
            src if src.startswith("http") else base_url + src, timeout=10
        ) as response:
            arrays.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16))
    return arrays


def test_compare_in_a_browser(browser, app_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    # generous waits (they end as soon as the page is ready): under pytest-xdist the other worker shares the cores
    WebDriverWait(browser, 180).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#generate")))
    _type(_field(browser, "prompts"), PROMPTS)
    _set_slider(browser, "steps", 12)
    _set_slider(browser, "num-images", 2)
    _set_slider(browser, "scale", 6.5)
    _set_slider(browser, "omega", 0.2)
    browser.find_element(
        By.XPATH, "//*[@id='methods']//label[normalize-space()='AG']"
    ).click()  # CFG and PG only
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    done = _wait_status(browser, lambda t: t.startswith("Done") or t.startswith("steerguide: error"), 300)
    assert done.startswith("Done: CFG w=6.5") and "PG w=6.5 ω=0.2" in done and "AG" not in done, done

    cfg, pg = _gallery(browser, app_url, "cfg"), _gallery(browser, app_url, "pg")
    assert len(cfg) == len(pg) == 4  # 2 prompts × 2 images
    assert all(a.shape == b.shape for a, b in zip(cfg, pg, strict=True))
    assert max(np.abs(a - b).max() for a, b in zip(cfg, pg, strict=True)) > 10  # PG is not CFG
    assert not browser.find_elements(By.CSS_SELECTOR, "#gallery-ag img")

    shot = tmp_path / "compare.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0
    if os.environ.get("STEERGUIDE_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["STEERGUIDE_UI_SCREENSHOT"])

    # Bad input: the CLI's one line, in the status line, and no images.
    _type(_field(browser, "personalization"), "/nonexistent/lora")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    line = _wait_status(browser, lambda t: t.startswith("steerguide: error"), 120)
    assert line == "steerguide: error: personalization not found: /nonexistent/lora"
    assert "Traceback" not in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, "#gallery-pg img")
