"""The masking notebook in a real JupyterLab, driven by a real browser: do its widgets render
and redraw? nbval runs kernels only; a widget that prints its repr, or a frontend that does
not match the kernel's ipywidgets, passes nbval and fails here.

Needs Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` package (the dev extra); never ``playwright install``, which downloads a browser.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url}")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (random port and token) in a copy of the repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "notebooks", repo / "notebooks",
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "configs", repo / "configs")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "TJEPA_SMOKE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--allow-root",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo}",
         "--expose-app-in-browser",  # window.jupyterapp: run commands without menu clicking
         "--LabApp.news_url="],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        yield f"http://127.0.0.1:{port}", token
    finally:  # stop the server in every case
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_masking_widget_renders_and_redraws_in_jupyterlab(jupyter_lab, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM}: apt-get install chromium "
                    "(.ci/run does) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (the dev extra) to run it")
    url, token = jupyter_lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/notebooks/02_masking.ipynb?token={token}")
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                                   timeout=60_000)
            page.wait_for_function(  # the kernel is up
                "document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset?.status"
                " === 'idle' || !!document.querySelector('.jp-KernelStatus-success')",
                timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            sliders = page.locator(".widget-interact .widget-slider")
            sliders.last.wait_for(timeout=150_000)  # the last cell's controls are drawn
            view = page.locator(".widget-interact .widget-output").last
            page.wait_for_function(
                "[...document.querySelectorAll('.widget-interact .widget-output')]"
                ".some(o => o.textContent.includes('rate=0.30'))", timeout=60_000)
            view.scroll_into_view_if_needed()
            before = view.inner_html()
            page.screenshot(path=str(tmp_path / "before.png"), full_page=False)

            # Move the seed slider (the last one) four steps with the keyboard.
            sliders.last.locator(".noUi-handle").focus()
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "([before]) => { const o = [...document.querySelectorAll("
                "'.widget-interact .widget-output')].pop(); return o && o.innerHTML !== before"
                " && o.textContent.includes('rate=0.30'); }", arg=[before], timeout=30_000)
            after = view.inner_html()
            seed = sliders.last.locator(".widget-readout").inner_text()
            page.screenshot(path=str(tmp_path / "after.png"), full_page=False)
        finally:
            browser.close()
    (tmp_path / "views.json").write_text(json.dumps({"before": before, "after": after}))
    assert seed.strip() == "4"
    assert after != before and "<span" in after  # a new rendering, not a repr
