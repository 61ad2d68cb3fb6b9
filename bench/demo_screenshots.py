"""The demo driven in a real browser: start demo/run_gradio.py, drive it in headless Chromium, save screenshots.

    apt-get install -y chromium chromium-driver && pip install selenium      # or: pip install -e ".[browser]"
    python bench/demo_screenshots.py --out outputs/screenshots [--num-steps 3 --seconds 1] [key=value ...]

Screenshots (full page, PNG): the start page, a run of each example (mixed, visual-only, audio-only: the examples
the demo draws at start-up) and an error (Animate with nothing uploaded), taken again 15 s later to show that it
stays. Prints a table: each shot, how long its run took and what the status and run lines said. The server runs
the inference config's model (key=value overrides go to it; the default `checkpoint=` serves a random model);
`--num-steps` and `--seconds` keep a CPU run short.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]
MODES = ("mixed", "visual", "audio")  # the order of the demo's synthetic examples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, output_dir: str, steps: int, seconds: float, overrides: list) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "demo" / "run_gradio.py"), "--port", str(port), "--output-dir", output_dir,
           f"num_inference_steps={steps}", f"limit={seconds}", *overrides]
    os.makedirs(output_dir, exist_ok=True)
    log = open(os.path.join(output_dir, "server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with {server.returncode}: see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise RuntimeError(f"the demo did not start within 300 s: see {log.name}")


def browser() -> webdriver.Chrome:
    options = Options()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def full_page(driver: webdriver.Chrome, path: str) -> None:
    """A screenshot of the whole page, below the fold too (Chrome DevTools' captureBeyondViewport)."""
    import base64

    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    Path(path).write_bytes(base64.b64decode(shot["data"]))


def text(driver: webdriver.Chrome, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text.strip()


def open_page(driver: webdriver.Chrome, url: str) -> None:
    driver.get(url)
    wait(driver, lambda: driver.find_elements(By.XPATH, "//button[normalize-space()='Animate']"), 60)
    time.sleep(2)  # examples and media previews settle


def wait(driver: webdriver.Chrome, condition, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except WebDriverException:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"the page did not reach its expected state within {timeout:g} s")


def animate(driver: webdriver.Chrome, timeout: float) -> float:
    """Press Animate and wait until the run line (success) or an error fills in; the seconds it took."""
    driver.find_element(By.XPATH, "//button[normalize-space()='Animate']").click()
    start = time.time()
    wait(driver, lambda: text(driver, "run-info") or "Error" in text(driver, "status"), timeout)
    time.sleep(2)  # the videos load
    return time.time() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/screenshots", help="folder for the PNGs and the server's log")
    ap.add_argument("--num-steps", type=int, default=3, help="denoising steps per run (num_inference_steps)")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds of driver per run")
    ap.add_argument("--timeout", type=float, default=400, help="longest wait for one run, seconds")
    ap.add_argument("overrides", nargs="*", default=None, help="inference config key=value (default: checkpoint=)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    port = free_port()
    server = start_server(port, os.path.join(out, "demo"), args.num_steps, args.seconds, args.overrides or ["checkpoint="])
    url, rows = f"http://127.0.0.1:{port}/", []
    driver = browser()
    try:
        open_page(driver, url)
        full_page(driver, os.path.join(out, "01_start.png"))
        rows.append(("01_start.png", "start page", "", "", ""))
        for i, mode in enumerate(MODES):
            open_page(driver, url)
            driver.find_element(By.CSS_SELECTOR, f'[data-testid="dataset-cell-{i}-0"]').click()
            time.sleep(2)
            seconds = animate(driver, args.timeout)
            name = f"{i + 2:02d}_{mode}.png"
            full_page(driver, os.path.join(out, name))
            rows.append((name, f"example {i + 1}, {mode}", f"{seconds:.0f}", text(driver, "status"),
                         text(driver, "run-info")))
        open_page(driver, url)
        seconds = animate(driver, 60)  # nothing uploaded
        full_page(driver, os.path.join(out, "05_error.png"))
        rows.append(("05_error.png", "Animate, nothing uploaded", f"{seconds:.0f}", text(driver, "status"), ""))
        time.sleep(15)
        full_page(driver, os.path.join(out, "06_error_15s_later.png"))
        rows.append(("06_error_15s_later.png", "the same, 15 s later", "", text(driver, "status"), ""))
    finally:
        driver.quit()
        server.terminate()
        server.wait(30)
    print("| screenshot | what | run s | status | run line |\n| --- | --- | ---: | --- | --- |")
    for row in rows:
        print("| " + " | ".join(cell.replace("\n", " ")[:160] for cell in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
