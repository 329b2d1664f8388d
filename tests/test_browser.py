"""The masking notebook in a real JupyterLab, driven by a real browser: do its widgets render
and redraw? nbval runs kernels only; a widget that prints its repr, or a frontend that does
not match the kernel's ipywidgets, passes nbval and fails here.

Needs Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` package (the dev extra); never ``playwright install``, which downloads a browser.

``pytest -m browser`` runs these two tests alone (about 35 s).
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
from contextlib import contextmanager
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


def _write_setting(settings_dir: Path, plugin: str, values: dict) -> None:
    path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


NOTEBOOK = "notebooks/02_masking"
# The callback as the notebook has it, and a broken one that ignores the seed slider: the
# control still moves, the view never changes. The second test proves the first can fail.
CALLBACK = "plot.denoiser_view(tokens, lengths, token_strings, kind, rate, mean_span, seed)"
BROKEN_CALLBACK = "plot.denoiser_view(tokens, lengths, token_strings, kind, rate, mean_span, 0)"


def _copy_repository(tmp_path: Path, callback: str = CALLBACK) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks",
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "configs", repo / "configs")
    for suffix in (".ipynb", ".py"):  # jupytext reads a paired notebook's inputs from the .py
        path = repo / f"{NOTEBOOK}{suffix}"
        text = path.read_text()
        assert CALLBACK in text, f"{path.name} no longer calls {CALLBACK}"
        path.write_text(text.replace(CALLBACK, callback))
    return repo


@contextmanager
def _jupyter_lab(repo: Path, tmp_path: Path):
    """A JupyterLab server on 127.0.0.1 (random port and token) in ``repo``; stopped in every
    case. Yields the notebook's URL."""
    settings = tmp_path / "settings"  # a user who always starts the notebook's own kernel
    _write_setting(settings, "notebook-extension/tracker", {"autoStartDefaultKernel": True})
    _write_setting(settings, "apputils-extension/notification",  # and never asks for news
                   {"fetchNews": "false", "checkForUpdates": False})
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "TJEPA_SMOKE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--allow-root",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo}",
         f"--LabApp.user_settings_dir={settings}",
         "--expose-app-in-browser",  # window.jupyterapp: run commands without menu clicking
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        except (RuntimeError, TimeoutError) as e:
            log.flush()
            tail = (tmp_path / "jupyter.log").read_text()[-2000:]
            raise RuntimeError(f"{e}; the end of its log:\n{tail}") from None
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


KERNEL_IDLE = ("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
               "?.status === 'idle'")
SOME_CELL_RAN = ("() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                 ".some(p => /\\[[0-9*]+\\]/.test(p.textContent))")
# The masking view is the HTML part of the interact's output (the figure below it is drawn
# separately and later, so it is not compared).
VIEW = ".widget-interact .widget-output .jp-RenderedHTML"
VIEW_SHOWN = (f"() => [...document.querySelectorAll('{VIEW}')]"
              ".some(o => o.textContent.includes('rate=0.30'))")
VIEW_REDRAWN = (f"(before) => {{ const o = [...document.querySelectorAll('{VIEW}')].pop();"
                " return o && o.innerHTML !== before && o.textContent.includes('rate=0.30'); }")


@pytest.fixture
def playwright_api():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM}: apt-get install chromium "
                    "(.ci/run does) to run the browser tests")
    return pytest.importorskip("playwright.sync_api",
                               reason="pip install playwright (the dev extra) to run it")


def _run_all_cells(page, sync_api) -> None:
    """Run all cells once the notebook's kernel is idle. The command is not awaited (its promise
    settles only when the last cell has run); a run issued while the session is still
    connecting is dropped, so it is issued again until a prompt shows a number."""
    page.wait_for_function(KERNEL_IDLE, timeout=90_000, polling=250)
    for _ in range(3):
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_function(SOME_CELL_RAN, timeout=15_000, polling=250)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError("JupyterLab never ran the notebook's cells")


def _move_seed_slider(sync_api, url: str, tmp_path: Path, redraw_timeout_ms: int) -> dict:
    """Open the notebook, run it, move the seed slider four steps with the keyboard as a user
    would, and wait for the view to be redrawn. Screenshots before and after (or at failure)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            _run_all_cells(page, sync_api)
            sliders = page.locator(".widget-interact .widget-slider")
            sliders.last.wait_for(timeout=120_000)  # the last cell's controls are drawn
            page.wait_for_function(VIEW_SHOWN, timeout=60_000, polling=250)
            view = page.locator(VIEW).last
            view.scroll_into_view_if_needed()
            before = view.inner_html()
            page.screenshot(path=str(tmp_path / "before.png"))

            sliders.last.locator(".noUi-handle").focus()  # the seed slider
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            seed = sliders.last.locator(".widget-readout").inner_text().strip()
            page.wait_for_function(VIEW_REDRAWN, arg=before, timeout=redraw_timeout_ms,
                                   polling=250)
            page.locator(".widget-interact .widget-output .jp-RenderedImage").last.wait_for()
            page.screenshot(path=str(tmp_path / "after.png"))
            return {"seed": seed, "before": before, "after": view.inner_html()}
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_masking_widget_renders_and_redraws_in_jupyterlab(playwright_api, tmp_path):
    with _jupyter_lab(_copy_repository(tmp_path), tmp_path) as url:
        views = _move_seed_slider(playwright_api, url, tmp_path, redraw_timeout_ms=30_000)
    (tmp_path / "views.json").write_text(json.dumps(views))
    assert views["seed"] == "4"
    assert views["after"] != views["before"] and "<span" in views["after"]  # not a repr


def test_browser_check_fails_when_the_widget_callback_ignores_its_control(playwright_api,
                                                                          tmp_path):
    repo = _copy_repository(tmp_path, BROKEN_CALLBACK)
    with _jupyter_lab(repo, tmp_path) as url, pytest.raises(playwright_api.TimeoutError):
        _move_seed_slider(playwright_api, url, tmp_path, redraw_timeout_ms=8_000)
    assert (tmp_path / "before.png").exists() and (tmp_path / "failure.png").exists()
