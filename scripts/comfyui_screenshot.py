"""The README's screenshot of the example LoRA workflow in ComfyUI's editor, taken in Debian's Chromium.

    python scripts/comfyui_screenshot.py [OUT.png]     # default docs/images/comfyui_graph.png

(with steerguide importable: installed, or PYTHONPATH=src).

Needs ComfyUI's source (`../shared/comfyui` or `$STEERGUIDE_COMFYUI`), its web frontend in this Python
(`pip install comfyui-frontend-package`, the version ComfyUI's requirements.txt pins) and Chromium with its
driver at /usr/bin (Debian: `apt-get install chromium chromium-driver`). ComfyUI's own server runs headless
on 127.0.0.1 from a temporary base directory: steerguide's nodes installed there by `steerguide comfyui
install`, the tiny random SD 1.5 checkpoint and LoRA of `steerguide.comfyui.testing` written to its model
folders under the file names the example uses (so that the file widgets hold files that exist). The page
loads examples/comfyui/pg-lora.ui.json, fits it to the window and is saved as a PNG; the server runs
under `timeout` and is ended by its process id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "examples" / "comfyui" / "pg-lora.ui.json"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WINDOW = (2400, 880)  # the example is one long row of nodes: a wide window keeps them legible
ZOOM = 0.97  # the share of the window the graph's bounding box fills
SERVER_LIFETIME_S = 300  # the server's own limit (coreutils timeout), whatever happens to this script
READY_S = 120
# the editor's first-start dialogs, the minimap and the frame-rate corner would cover the graph
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Workflow.ShowMissingModelsWarning": False, "Comfy.Workflow.ShowMissingNodesWarning": False}


def _missing() -> str | None:
    from steerguide.comfyui.harness import check_comfyui_dir, default_comfyui_dir
    from steerguide.errors import UserError

    try:
        check_comfyui_dir(default_comfyui_dir())
    except UserError as e:
        return f"ComfyUI's source: {e} (set $STEERGUIDE_COMFYUI)"
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        return "ComfyUI's web frontend is not installed in this Python (pip install comfyui-frontend-package)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} not found (Debian: apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed in this Python (pip install selenium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _widget(workflow: dict, node_type: str) -> str:
    return next(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == node_type)


def prepare_base(base: Path, workflow: dict) -> None:
    """ComfyUI's base directory: our nodes, the tiny files under the example's names, quiet settings."""
    from steerguide.cli import run
    from steerguide.comfyui import testing
    from steerguide.comfyui.harness import default_comfyui_dir, leave_comfyui, use_comfyui

    (base / "custom_nodes").mkdir(parents=True)
    if run(["comfyui", "install", str(base)]) != 0:
        raise SystemExit("steerguide comfyui install failed")
    folder = use_comfyui(default_comfyui_dir())  # ComfyUI's modules build the tiny files
    unet = testing.unet_state_dict(seed=0)
    models = base / "models"
    # without CLIP-L's full-size text encoder: nothing runs here, the file only has to exist
    testing.write_checkpoint(models / "checkpoints" / _widget(workflow, "CheckpointLoaderSimple"), unet=unet,
                             with_clip=False)
    testing.write_lora(models / "loras" / _widget(workflow, "PersonalizationLoRALoader"), unet)
    leave_comfyui(folder)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(SETTINGS))


def start_server(base: Path, port: int) -> subprocess.Popen:
    from steerguide.comfyui.harness import default_comfyui_dir

    cmd = ["timeout", str(SERVER_LIFETIME_S), sys.executable, "-m", "steerguide.comfyui.harness",
           str(default_comfyui_dir()), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch", "--disable-api-nodes"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    log = open(base / "server.log", "w")  # noqa: SIM115 (closed by stop_server)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log = log
    deadline = time.monotonic() + READY_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5):
                return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(proc)
                raise SystemExit("ComfyUI did not start:\n" + (base / "server.log").read_text()[-3000:]) from None
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # timeout passes SIGTERM on to ComfyUI
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()


# After the app has loaded: the workflow into the canvas, then the view fitted to its nodes.
LOAD_GRAPH = """
const [workflow, zoom, done] = arguments;
// Frontend 1.27.10 lists model loaders by name (e.g. UpscaleModelLoader); one whose module did not import
// here (comfy_extras/nodes_upscale_model.py needs spandrel) leaves an undefined entry that breaks every
// file widget (ckpt_name, lora_name) into a red "UNKNOWN" text box. Drop those entries first.
const pinia = document.querySelector("#vue-app").__vue_app__.config.globalProperties.$pinia;
const models = pinia._s.get("modelToNode");
if (!models) return done("error: the frontend has no modelToNode store (not 1.27.10?)");
models.registerDefaults();
for (const [folder, providers] of Object.entries(models.modelToNodeMap))
  models.modelToNodeMap[folder] = providers.filter(p => p.nodeDef);
window.app.loadGraphData(workflow, true, true, "pg-lora").then(() => setTimeout(() => {
  // after the frontend's own first view of the new graph, which would override ours
  const canvas = window.app.canvas, nodes = window.app.graph.nodes, title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom});
  canvas.setDirty(true, true);
  // a widget the frontend failed to build shows as a red "UNKNOWN" box: no picture then
  const broken = nodes.filter(n => n.has_errors || n.widgets?.some(w => w.name === "UNKNOWN"));
  if (broken.length) return done("error: widgets not built on " + broken.map(n => n.type).join(", "));
  done(nodes.map(n => n.type));
}, 1000), e => done("error: " + e));
"""


def screenshot(port: int, workflow: dict, out: Path) -> list[str]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_script_timeout(60)
        # the page exactly WINDOW (--window-size counts the browser's own bars too)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        driver.get(f"http://127.0.0.1:{port}")
        WebDriverWait(driver, 90).until(lambda d: d.execute_script(
            "return !!(window.app && window.app.graph && window.app.canvas && document.querySelector('canvas'))"))
        time.sleep(3)  # the node definitions and extensions finish registering
        types = driver.execute_async_script(LOAD_GRAPH, workflow, ZOOM)
        if isinstance(types, str):
            raise SystemExit(f"the page did not load the workflow: {types}")
        time.sleep(3)  # let the canvas draw
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return types
    finally:
        driver.quit()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "docs" / "images" / "comfyui_graph.png"
    problem = _missing()
    if problem:
        print(f"comfyui_screenshot: {problem}", file=sys.stderr)
        return 2
    workflow = json.loads(WORKFLOW.read_text())
    base = Path(tempfile.mkdtemp(prefix="comfyui-shot-"))
    try:
        prepare_base(base, workflow)
        port = _free_port()
        proc = start_server(base, port)
        try:
            types = screenshot(port, workflow, out)
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"wrote {out} ({len(types)} nodes: {', '.join(types)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
