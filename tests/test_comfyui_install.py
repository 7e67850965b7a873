"""`steerguide comfyui install`: the custom_nodes entry it writes, and its bad input (no ComfyUI needed)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from steerguide.cli import run


def test_install_writes_an_entry_that_imports_the_installed_package(tmp_path, capsys, monkeypatch):
    (tmp_path / "custom_nodes").mkdir()
    assert run(["comfyui", "install", str(tmp_path)]) == 0
    entry = tmp_path / "custom_nodes" / "steerguide"
    assert "installed steerguide's ComfyUI nodes" in capsys.readouterr().out
    assert {p.name for p in entry.iterdir()} == {"__init__.py", "pyproject.toml", "requirements.txt"}
    assert "[tool.comfy]" in (entry / "pyproject.toml").read_text()
    # the entry only re-exports steerguide.comfyui.nodes: loaded as ComfyUI loads a node folder, with a
    # stand-in for that module, it hands ComfyUI exactly its mappings
    fake = type(sys)("steerguide.comfyui.nodes")
    fake.NODE_CLASS_MAPPINGS, fake.NODE_DISPLAY_NAME_MAPPINGS = {"X": object}, {"X": "x"}
    monkeypatch.setitem(sys.modules, "steerguide.comfyui.nodes", fake)
    spec = importlib.util.spec_from_file_location("custom_nodes_steerguide", entry / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is fake.NODE_CLASS_MAPPINGS
    # rerunning updates the entry in place
    assert run(["comfyui", "install", str(tmp_path)]) == 0


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("not_comfyui", "is not a ComfyUI folder (no custom_nodes/ in it)"),
    ("foreign", "exists and was not written by steerguide"),
])
def test_install_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, needle):
    folder = tmp_path / "comfy"
    if case == "file":
        folder.write_text("not a folder\n")
    elif case != "missing":
        folder.mkdir()
    if case == "foreign":
        (folder / "custom_nodes" / "steerguide").mkdir(parents=True)
        (folder / "custom_nodes" / "steerguide" / "__init__.py").write_text("# someone else's\n")
    assert run(["comfyui", "install", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
