"""ComfyUI's own server, headless on 127.0.0.1, runs the example workflow with steerguide's nodes.

The nodes are installed the documented way (`steerguide comfyui install BASE`) into a temporary ComfyUI
base directory holding the tiny SD 1.5 checkpoint (with CLIP-L's full-size random text encoder, which
ComfyUI's SD 1.5 needs) and LoRAs. The server runs under `timeout`, so it stops by itself even if the
test process dies; the fixture ends it (by its process id) when the file is done.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from comfyui_env import REPO, comfyui_dir, write_models
from processes import MARK, end_marked

SERVER_LIFETIME_S = 300  # the server's own limit (coreutils timeout), whatever happens to the test
READY_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path, port: int):
        self.base, self.url = base, f"http://127.0.0.1:{port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.load(r)

    def post(self, workflow: dict) -> tuple[int, dict]:
        data = json.dumps({"prompt": workflow}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, workflow: dict, timeout: float = 120) -> dict:
        """Post a workflow and wait for its history entry (success or error)."""
        status, answer = self.post(workflow)
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.5)
        raise AssertionError(f"workflow {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import os

    from steerguide.cli import run
    from steerguide.comfyui.harness import leave_comfyui, use_comfyui

    folder = comfyui_dir()
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    assert run(["comfyui", "install", str(base)]) == 0  # the documented install
    use_comfyui(folder)  # ComfyUI's modules build the tiny files (this process only)
    write_models(base / "models", with_clip=True)
    leave_comfyui(folder)
    (base / "frontend").mkdir()  # an empty web root: ComfyUI's frontend package is not needed headless
    port = _free_port()
    mark = f"comfyui-{port}"
    cmd = ["timeout", str(SERVER_LIFETIME_S), sys.executable, "-m", "steerguide.comfyui.harness", str(folder),
           "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--front-end-root", str(base / "frontend"), "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch", "--disable-api-nodes"]
    env = {**os.environ, MARK: mark, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = open(base / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    srv = Server(base, port)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                srv.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("ComfyUI did not start:\n" + (base / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        end_marked(mark)
        log.close()


def example(name: str, **changes) -> dict:
    """An example workflow from examples/comfyui, on the tiny files, 3 steps at 64×64."""
    workflow = json.loads((REPO / "examples" / "comfyui" / name).read_text())
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "tiny-sd15.safetensors"
        if "lora_name" in inputs:
            inputs["lora_name"] = "tiny-sd15-lora.safetensors"
        if node["class_type"] == "BasicScheduler":
            inputs["steps"] = 3
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = 64
    for (node_id, key), value in changes.items():
        workflow[node_id]["inputs"][key] = value
    return workflow


def _node_of(workflow: dict, class_type: str) -> str:
    return next(k for k, v in workflow.items() if v["class_type"] == class_type)


def test_example_workflow_writes_an_image(server):
    from PIL import Image

    workflow = example("pg-lora.api.json")
    entry = server.run(workflow)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"][_node_of(workflow, "SaveImage")]["images"]
    path = server.base / "output" / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_omega_outside_its_range_is_refused_by_comfyui_validation(server):
    workflow = example("pg-lora.api.json")
    guider = _node_of(workflow, "PersonalizationGuider")
    workflow[guider]["inputs"]["omega"] = 1.5
    status, answer = server.post(workflow)
    assert status == 400
    (error,) = answer["node_errors"][guider]["errors"]
    assert error["message"] == "Value 1.5 bigger than max of 1.0" and error["details"] == "omega"


@pytest.mark.parametrize("case, needle", [
    ("other_lora", "do not fit the model's weight"),
    ("no_personalization", "the model has no steerguide personalization"),
])
def test_bad_input_is_one_line_in_comfyui_node_error(server, case, needle):
    workflow = example("pg-lora.api.json")
    guider = _node_of(workflow, "PersonalizationGuider")
    if case == "other_lora":
        workflow[_node_of(workflow, "PersonalizationLoRALoader")]["inputs"]["lora_name"] = "other-arch-lora.safetensors"
    else:
        workflow[guider]["inputs"]["model"] = [_node_of(workflow, "CheckpointLoaderSimple"), 0]
    entry = server.run(workflow)
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert needle in error["exception_message"]
    assert len(error["exception_message"].strip().splitlines()) == 1
    assert error["exception_type"] == "steerguide.errors.UserError"
    # ComfyUI's traceback stops at the node's function: none of steerguide's internals in it
    assert "steerguide" not in "".join(error["traceback"][:-1]) and "node_function" in error["traceback"][-1]


def _image(server, entry, workflow):
    import numpy as np
    from PIL import Image

    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"][_node_of(workflow, "SaveImage")]["images"]
    with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as im:
        return np.asarray(im).astype(int)


def comfyui_only_pg(lora: str, omega: float) -> dict:
    """PG from ComfyUI's own nodes: LoraLoader's CLIP at 1 (positive) and at ω (negative), the UNet LoRA
    as hooks (1 on the positive, ω on the negative), CFGGuider; as in the example, 3 steps at 64×64."""
    text = example("pg-lora.api.json")["3"]["inputs"]["text"]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                      "strength_model": 0.0, "strength_clip": 1.0}},
        "3": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                      "strength_model": 0.0, "strength_clip": omega}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": text}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": ""}},
        "6": {"class_type": "CreateHookLora", "inputs": {"lora_name": lora, "strength_model": 1.0, "strength_clip": 0.0}},
        "7": {"class_type": "CreateHookLora", "inputs": {"lora_name": lora, "strength_model": omega, "strength_clip": 0.0}},
        "8": {"class_type": "ConditioningSetProperties",
              "inputs": {"cond_NEW": ["4", 0], "strength": 1.0, "set_cond_area": "default", "hooks": ["6", 0]}},
        "9": {"class_type": "ConditioningSetProperties",
              "inputs": {"cond_NEW": ["5", 0], "strength": 1.0, "set_cond_area": "default", "hooks": ["7", 0]}},
        "10": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["8", 0], "negative": ["9", 0], "cfg": 7.5}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "12": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "14": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "15": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["13", 0], "guider": ["10", 0], "sampler": ["11", 0],
                                                                 "sigmas": ["12", 0], "latent_image": ["14", 0]}},
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["1", 2]}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": "comfyui-only-pg"}},
    }


def test_lora_with_a_text_encoder_part_equals_comfyui_own_nodes(server):
    lora, omega = "tiny-sd15-te-lora.safetensors", 0.3
    ours = example("pg-lora.api.json")
    ours[_node_of(ours, "PersonalizationLoRALoader")]["inputs"]["lora_name"] = lora
    ours[_node_of(ours, "PersonalizationGuider")]["inputs"]["omega"] = omega
    weak = _node_of(ours, "PersonalizationWeakTextEncoder")
    ours[weak]["inputs"]["omega"] = omega
    ref = comfyui_only_pg(lora, omega)
    got, expected = _image(server, server.run(ours), ours), _image(server, server.run(ref), ref)
    assert abs(got - expected).max() <= 1  # the same floats up to rounding into 8 bits
    # the text-encoder part matters: the negative prompt encoded at 1 instead of ω gives another image
    ours[weak]["inputs"]["omega"] = 1.0
    assert (abs(_image(server, server.run(ours), ours) - got) > 1).sum() > 10
