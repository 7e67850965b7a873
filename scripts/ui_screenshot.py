"""The README's screenshot of `steerguide ui`'s Compare tab on the toy world, taken in Debian's Chromium.

    python scripts/ui_screenshot.py docs/images/ui_compare.png [PERSONALIZATION]

PERSONALIZATION: a toy LoRA (default: the calibrated bnq_triangle LoRA shipped with the demo); the
prompts are two of its subject's evaluation prompts, at w = 7.5 and PG's default ω = 0.5.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from steerguide.ui.app import launch
from steerguide.ui.studio import Studio

SUBJECT = "bnq_triangle"


def main(out: str, personalization: str | None = None) -> None:
    from steerguide.toyworld.assets import shipped_personalizations_path
    from steerguide.toyworld.subjects import get_subject

    subject = get_subject(SUBJECT)
    prompts_text = "\n".join(subject.eval_prompts()[:2])
    if personalization is None:
        import shutil

        # a copy at a short path, which the page shows
        personalization = "/tmp/steerguide-ui-shot/bnq_triangle-lora"
        shutil.rmtree(personalization, ignore_errors=True)
        shutil.copytree(next(shipped_personalizations_path().glob(f"{SUBJECT}-*")), personalization)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["SE_OFFLINE"] = "true"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(Studio(personalization=personalization, workdir="/tmp/steerguide-ui-shot"), port=port, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}")
        WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#generate")))
        prompts = driver.find_element(By.CSS_SELECTOR, "#prompts textarea")
        prompts.send_keys(Keys.CONTROL, "a")
        prompts.send_keys(prompts_text)
        for elem_id, value in (("num-images", 3), ("scale", 7.5), ("omega", 0.5)):
            box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(value), Keys.TAB)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        end = time.monotonic() + 300
        while not driver.find_element(By.CSS_SELECTOR, "#compare-status").text.startswith(("Done", "steerguide")):
            if time.monotonic() > end:
                raise SystemExit("no images after 300 s")
            time.sleep(0.5)
        time.sleep(1)  # let the galleries finish drawing
        driver.save_screenshot(out)
        print(driver.find_element(By.CSS_SELECTOR, "#compare-status").text)
    finally:
        driver.quit()
        demo.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
