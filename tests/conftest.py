"""Shared fixtures: tiny random pipelines of the real architectures, saved once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch starts OpenMP: spinning threads waste whole cores when other jobs share the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Serially a test may use two cores; under pytest-xdist (`-n N`, the README's command) each worker takes
# its share of the cores, so that N workers do not fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir("sd15" | "sdxl" | "sd3") -> Path`: a saved tiny random pipeline folder (cached)."""
    from steerguide.testing import save_pipeline

    cache: dict[str, Path] = {}

    def get(arch: str = "sd15") -> Path:
        if arch not in cache:
            cache[arch] = save_pipeline(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Three random 32×32 photos to train on (test_train_resume.py, test_train_distributed.py)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# -- balancing the two xdist workers ---------------------------------------------------------------------
# The README runs `-n auto --dist loadfile`: each file goes whole to one worker, and the wall time is the
# busier worker's. xdist hands out files most-tests-first by default, which puts the long one-test files
# (trainings, the browser) last, where one of them can leave a worker alone for a minute. Handed out
# longest first instead (measured seconds, heaviest first; the rest follow in their usual order), the
# short files fill the gaps at the end.
LONG_FILES = [  # seconds per file in a full `-n 2 --dist loadfile` run (idle machine, session 12;
    # test_train_stopping.py added in session 13)
    "test_cli_contract.py",  # 38
    "test_comfyui_nodes.py",  # 37
    "test_train_distributed.py",  # 24
    "test_train_stopping.py",  # about 20 (session 13, measured serially: 38 s under load)
    "test_ui.py",  # 16
    "test_ui_browser.py",  # 12, and Chromium's own time besides
    "test_reference.py",  # 13
    "test_lazy_import.py",  # 13
    "test_comfyui_server.py",  # 13, and the ComfyUI server's own process besides
    "test_properties.py",  # 12
    "test_sweep_contract.py",  # 11
    "test_benchmarks.py",  # 10
    "test_demo.py",  # 10
    "test_train_methods.py",  # 10
    "test_train_resume.py",  # 10
    "test_engine_cases.py",  # 9
    "test_guiders.py",  # 9
    "test_tune.py",  # 9
    "test_processes.py",  # 9
    "test_cli_contract_more.py",  # 8
    "test_sweep.py",  # 7
    "test_train_base.py",  # 7
    "test_sweep_kill.py",  # 7
    "test_formats.py",  # 6
    "test_flux.py",  # 6
]


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False  # keep the order below


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: files stay whole
