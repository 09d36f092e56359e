"""The ChainExplorer in a real browser: Voilà on 127.0.0.1 renders a notebook that shows
it, Debian's chromium (headless, through chromium-driver and selenium) picks two points
and a run, and we check what the page displays."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from support import require_module, require_tools

from blockforensics.datasets.investigation import build_investigation

pytestmark = pytest.mark.slow
WAIT = 180  # seconds: a kernel start, a triage and the first render on a busy machine


def _notebook(chain_dir) -> dict:
    source = ("import blockforensics as bf\n"
              "from blockforensics.widgets import ChainExplorer\n"
              f"explorer = ChainExplorer(bf.Chain.open({str(chain_dir)!r}))\n"
              "explorer")
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "explorer",
                       "metadata": {}, "outputs": [], "source": source}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_module("voila", "voila")
    webdriver = require_module("selenium.webdriver", "selenium")
    require_tools("chromium", "chromedriver", "mkfs.vfat", "mcopy", "mmd", "mdel")
    tmp = tmp_path_factory.mktemp("browser")
    sample = build_investigation(tmp / "case", "fat32")
    notebook = tmp / "explorer.ipynb"
    notebook.write_text(json.dumps(_notebook(sample.chain_dir)))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--Voila.port_retries=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,2400"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        driver = webdriver.Chrome(options=options, service=service)
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def _wait_for(driver, predicate, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.5).until(
        lambda d: predicate(d), message=f"waited {WAIT} s for {what}")


def _selects(driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    return [Select(e) for e in driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")]


def _body(driver) -> str:
    return driver.find_element("tag name", "body").text


def test_explorer_opens_on_the_burst_in_the_browser(page):
    _wait_for(page, lambda d: "suspected encryption" in _body(d), "the explorer to render")
    point, base, changed_file, _ = _selects(page)
    assert point.first_selected_option.text.startswith("3:")
    assert base.first_selected_option.text == "its parent"
    assert changed_file.first_selected_option.text.startswith("⚠")
    body = _body(page)
    assert "✓ reading /docs/" in body  # the status line: the top file read at both points
    assert "first changed byte at file offset" in body
    images = page.find_elements("css selector", ".jupyter-widgets-output-area img, img")
    assert images, "the block-map picture is shown"


def test_picking_two_points_and_a_run_updates_the_page(page):
    _wait_for(page, lambda d: len(_selects(d)) == 4, "the dropdowns")
    point, base, _, _ = _selects(page)
    base.select_by_visible_text("an empty volume")
    _wait_for(page, lambda d: "✓ comparing an empty volume with point 3" in _body(d),
              "the comparison with an empty volume")
    point.select_by_index(1)  # point 1: day 2
    _wait_for(page, lambda d: "✓ comparing an empty volume with point 1" in _body(d),
              "the comparison of point 1")
    base = _selects(page)[1]
    base.select_by_visible_text("0: full day 1")
    _wait_for(page, lambda d: "✓ comparing point 0 with point 1" in _body(d),
              "the comparison of points 0 and 1")
    body = _body(page)
    assert "/docs/report.txt" in body and "/docs/budget.csv" in body
    run = _selects(page)[3]
    target = next(i for i, o in enumerate(run.options) if "/docs/report.txt" in o.text)
    run.select_by_index(target)
    _wait_for(page, lambda d: "owners: /docs/report.txt" in _body(d), "the run's owners")
    marks = page.find_elements("css selector", "mark")
    assert marks, "changed bytes are marked in the aligned before/after dump"
