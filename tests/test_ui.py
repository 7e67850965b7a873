"""`steerguide ui` without a browser: the command, and the studio behind the page (compare, sweeps, training).

The page itself is driven in a real browser by tests/test_ui_browser.py.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora
from steerguide.ui.studio import Studio, open_sweep, setting_images

PROMPTS = ["a sks star on a teal background", "a sks star in the top left"]


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory):
    """A random LoRA on the toy world's base model (a stand-in for a trained one: fast, and Δ is real)."""
    from steerguide.toyworld import base_model_path

    return save_random_lora(
        load_pipeline(base_model_path()), tmp_path_factory.mktemp("toy-lora"), seed=2, std=0.1
    )


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(workdir=tmp_path_factory.mktemp("ui-work"))


def arrays(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# -- the command ----------------------------------------------------------------------------------------------


def test_ui_help(capsys):
    assert run(["ui", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps at the terminal's width (53-76: "toy\nworld")
    assert "--personalization" in out and "--port" in out and "toy world" in out and "--preset" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "--port must be from 1 to 65535, got 70000"),
        (["--personalization", "/nonexistent/lora"], "personalization not found: /nonexistent/lora"),
        (["--base", "/nonexistent/base"], "base model not found: /nonexistent/base"),
        (["--device", "cuda:7"], "device 'cuda:7' asked for"),
    ],
)
def test_ui_bad_options_are_one_line(capsys, args, message):
    assert run(["ui", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steerguide: error: ") and message in err and "\n" not in err


# -- compare ---------------------------------------------------------------------------------------------------


def test_compare_gives_the_library_samples_and_scores(studio, toy_lora):
    rows = studio.compare(
        PROMPTS,
        methods=["cfg", "pg"],
        scale=5.0,
        omega=0.3,
        steps=6,
        num_images=2,
        seed=3,
        personalization=str(toy_lora),
    )
    cfg, pg = rows
    assert (cfg.method, pg.method) == ("cfg", "pg") and len(cfg.images) == len(pg.images) == 4
    assert cfg.seeds == [3, 4, 3, 4] and cfg.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    # The same images as the library's sample() at these settings (the page adds nothing of its own).
    pipe = load_pipeline(studio.base)
    personal = load_personalization(pipe, toy_lora)
    want = sample(
        pipe,
        personal,
        GuidanceConfig("pg", scale=5.0, omega=0.3),
        PROMPTS,
        num_images=2,
        seed=3,
        steps=6,
        progress=False,
    )
    assert np.array_equal(arrays(pg.images), arrays([im for row in want.images for im in row]))
    assert np.abs(arrays(pg.images) - arrays(cfg.images)).max() > 10  # ω matters
    # Text scores from the toy judge; no fidelity: a random LoRA has no subject photos.
    assert all(set(s) == {"text"} and 0.0 <= s["text"] <= 1.0 for s in pg.scores)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(omega_schedule="linear:2"), "omega 2 is outside [0, 1]; pass --allow-extrapolation"),
        (dict(omega_schedule="wiggle"), "unknown omega schedule 'wiggle'"),
        (dict(steps=0), "steps must be a whole number from 1 to 500, got 0"),
        (dict(num_images=17), "number of images must be a whole number from 1 to 16"),
        (dict(seed=-1), "seed must be a whole number >= 0"),
        (dict(personalization="/nonexistent/lora"), "personalization not found: /nonexistent/lora"),
        (dict(personalization=""), "AG and PG need a personalization"),
        (dict(methods=[]), "no method chosen"),
    ],
)
def test_compare_bad_input_is_the_libraries_one_line(studio, toy_lora, kwargs, message):
    settings = dict(
        methods=["cfg", "pg"], scale=5.0, omega=0.5, steps=2, num_images=1, personalization=str(toy_lora)
    )
    settings.update(kwargs)
    with pytest.raises(UserError) as caught:
        studio.compare(PROMPTS, **settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_page_and_the_cli_say_the_same_line(studio, capsys, tmp_path):
    with pytest.raises(UserError) as caught:
        studio.compare(
            PROMPTS, methods=["pg"], scale=5.0, omega=0.5, omega_schedule="linear:2", personalization="x"
        )
    assert (
        run(["generate", "--omega-schedule", "linear:2", "--prompt", "a star", "--out", str(tmp_path / "o")])
        == 2
    )
    assert capsys.readouterr().err.strip() == f"steerguide: error: {caught.value}"


def test_concurrent_users_do_not_mix_samples(studio, toy_lora):
    """Two users at once (PG at ω = 0 and CFG) get what each gets alone."""
    settings = dict(scale=5.0, omega=0.0, steps=8, num_images=2, seed=1, personalization=str(toy_lora))
    alone = {m: arrays(studio.compare(PROMPTS, methods=[m], **settings)[0].images) for m in ("pg", "cfg")}
    together: dict = {}
    start = threading.Barrier(2)

    def user(method):
        start.wait()
        together[method] = arrays(studio.compare(PROMPTS, methods=[method], **settings)[0].images)

    threads = [threading.Thread(target=user, args=(m,)) for m in ("pg", "cfg")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for method in ("pg", "cfg"):
        assert np.array_equal(together[method], alone[method]), method


# -- explore a sweep ------------------------------------------------------------------------------------------------


def _sweep(folder):
    (folder / "images").mkdir(parents=True)
    rows = []
    for method, scale, omega, shade in [
        ("cfg", 3.0, None, 40),
        ("cfg", 7.5, None, 80),
        ("pg", 7.0, 0.5, 160),
    ]:
        for seed in (0, 1):
            key = f"{method}-{scale}-{seed}"
            Image.new("RGB", (32, 32), (shade, seed * 50, 0)).save(folder / "images" / f"{key}.png")
            rows.append(
                {
                    "key": key, "method": method, "scale": scale, "omega": omega,
                    "omega_schedule": None if omega is None else "constant", "interval": [0.0, 1.0],
                    "subject": "sks_star", "prompt": "a sks star", "prompt_index": 0, "seed": seed,
                    "image": str(folder / "images" / f"{key}.png"),
                    "metrics": {"toy_fidelity": shade / 255, "toy_text": 1 - shade / 255},
                }
            )  # fmt: skip
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_sweep_point_shows_its_images_beside_cfg_at_the_same_seeds(tmp_path):
    view = open_sweep(_sweep(tmp_path / "sweep"), tmp_path / "plots")
    assert view.plot.is_file() and (view.x_metric, view.y_metric) == ("toy_fidelity", "toy_text")
    assert list(view.settings) == ["CFG w=3", "CFG w=7.5", "PG w=7 ω=0.5"]
    chosen, cfg = setting_images(view, "PG w=7 ω=0.5")
    assert [np.asarray(im)[0, 0].tolist() for im, _ in chosen] == [[160, 0, 0], [160, 50, 0]]
    # CFG at the nearest scale (7.5), seed for seed.
    assert [np.asarray(im)[0, 0].tolist() for im, _ in cfg] == [[80, 0, 0], [80, 50, 0]]
    assert "seed 1" in cfg[1][1] and "CFG w=7.5" in cfg[1][1]


def test_sweep_bad_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="sweep folder not found"):
        open_sweep(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no results.jsonl"):
        open_sweep(tmp_path / "empty", tmp_path)


# -- personalize ------------------------------------------------------------------------------------------------


def test_train_a_toy_lora_with_progress_then_compare_with_it(studio):
    seen = []
    folder = studio.train(toy_subject="sks_star", steps=4, on_progress=lambda d, t, w: seen.append((d, t)))
    assert (folder / "pytorch_lora_weights.safetensors").is_file() and (folder / "train.json").is_file()
    assert seen[-1] == (4, 4) and all(t == 4 for _, t in seen)
    rows = studio.compare(
        PROMPTS[:1], methods=["pg"], scale=5.0, omega=0.5, steps=2, num_images=1, personalization=str(folder)
    )
    assert set(rows[0].scores[0]) == {"fidelity", "text"}  # the toy subject's photos are known: fidelity too


def test_train_bad_photo_folder_is_one_line(studio, tmp_path):
    with pytest.raises(UserError, match="image folder .* does not exist"):
        studio.train(photos=str(tmp_path / "none"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no usable image"):
        studio.train(photos=str(tmp_path / "notes"))


def test_real_model_judges_dino_and_clip_t(tmp_path):
    """On a real base model the scores come from DINO and CLIP-T weights given by path (tiny random ones here)."""
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit
    from steerguide.ui.studio import Judges

    judges = Judges(
        toy=False, dino=str(save_tiny_vit(tmp_path / "vit")), clip=str(save_tiny_clip(tmp_path / "clip"))
    )
    images = [Image.new("RGB", (32, 32), (200, 30 * i, 0)) for i in range(3)]
    references = [Image.new("RGB", (32, 32), (200, 0, 0))]
    scores = judges.score(images, ["a photo of sks dog"] * 3, references, token="sks")
    assert all(set(s) == {"fidelity", "text"} for s in scores)
    assert len({round(s["fidelity"], 6) for s in scores}) == 3  # the images differ, so do their scores
    assert Judges(toy=False).score(images, ["x"] * 3, references, token=None) == [{}, {}, {}]


def test_ui_port_in_use_is_one_line(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"steerguide: error: cannot serve on 127.0.0.1:{port}: the port is in use (choose another with --port)"
    )


# -- presets from `steerguide tune` ------------------------------------------------------------------------------
# A tuned setting off the sliders' steps (w 4.243, ω 0.3) with a schedule: a page that rounds, swaps ω and w, or
# drops the schedule shows other controls and draws other images than `generate --preset`.
PRESET = dict(method="pg", scale=4.243, omega=0.3, omega_schedule="linear:1")


@pytest.fixture
def preset_file(tmp_path, toy_lora):
    from steerguide.toyworld import base_model_path
    from steerguide.tune.preset import Preset, write_preset

    # as a toy tuning writes it: the toy base by its folder
    return write_preset(
        tmp_path / "tuned" / "preset.yaml",
        Preset(**PRESET, base=str(base_model_path()), personalization=str(toy_lora)),
    )


def _handler(demo, trigger: str):
    """The page's function behind the component with this elem_id (its click or upload), as gradio calls it."""
    for fn in demo.fns.values():
        if any(demo.blocks[block_id].elem_id == trigger for block_id, _ in fn.targets if block_id in demo.blocks):
            return fn
    raise AssertionError(f"no handler on {trigger}")


def _call(fn, values: dict):
    """Call a handler with the page's current values (by elem_id; defaults for the rest), outputs by elem_id."""
    result = fn.fn(*[values.get(c.elem_id, c.value) for c in fn.inputs])
    return {c.elem_id: out for c, out in zip(fn.outputs, result, strict=True)}


def _filled(outputs: dict) -> dict:
    """The values a handler's updates set (gr.update() without a value leaves the control as it was)."""
    return {k: v["value"] for k, v in outputs.items() if isinstance(v, dict) and "value" in v}


WANT_CONTROLS = {"methods": ["PG"], "scale": 4.243, "omega": 0.3, "schedule": "linear:1"}


def test_a_preset_loaded_in_the_page_fills_compare_and_draws_what_generate_draws(
    studio, toy_lora, preset_file, tmp_path
):
    from steerguide.ui.app import build_app

    demo = build_app(studio)
    loaded = _call(_handler(demo, "preset-load"), {"preset-path": str(preset_file.parent)})  # a tune folder
    assert loaded["compare-status"].startswith("Loaded preset") and "Note" not in loaded["compare-status"]
    controls = _filled(loaded)
    assert {k: controls[k] for k in WANT_CONTROLS} == WANT_CONTROLS
    assert controls["personalization"] == str(toy_lora) and "ag-omega" not in controls  # AG's ω: untouched
    # an upload does the same, whatever the path box holds
    uploaded = _call(_handler(demo, "preset-file"), {"preset-file": str(preset_file), "preset-path": "old.yaml"})
    assert _filled(uploaded) == controls
    # Generate with those controls: the image `generate --preset` writes for the same prompt and seed.
    page = dict(controls, prompts=PROMPTS[0], seed=3, steps=4, **{"num-images": 1})
    shown = _call(_handler(demo, "generate"), page)
    assert shown["compare-status"].startswith("Done"), shown["compare-status"]
    (image, _caption), = shown["gallery-pg"]["value"]
    args = ["generate", "--preset", str(preset_file), "-p", PROMPTS[0], "--seed", "3", "--steps", "4"]
    assert run([*args, "--out", str(tmp_path / "gen")]) == 0
    (png,) = sorted((tmp_path / "gen").glob("*.png"))
    want = np.asarray(Image.open(png).convert("RGB"))
    factor = image.width // want.shape[1]  # the page enlarges toy images (nearest neighbour)
    assert np.array_equal(np.asarray(image)[::factor, ::factor], want)


def test_steerguide_ui_preset_sets_the_controls_before_the_server_starts(
    monkeypatch, toy_lora, preset_file
):
    import steerguide.ui.app as app

    started = {}
    monkeypatch.setattr(app, "launch", lambda studio, **kw: started.update(studio=studio, **kw))
    assert run(["ui", "--preset", str(preset_file), "--port", "7861"]) == 0
    studio = started["studio"]
    assert studio.toy and studio.personalization == str(toy_lora)  # the preset's base and personalization
    demo = app.build_app(studio, started["guidance"])
    shown = {b.elem_id: b.value for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {k: shown[k] for k in WANT_CONTROLS} == WANT_CONTROLS and shown["ag-omega"] == 0.0


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot read it"),
        ("guidance: [", "is not valid YAML"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 3, omega: 2}\n", "outside [0, 1]"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 3}\npersonalization: /no/lora\n"
         "base: /other/base\n",
         "base model not found: /other/base"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 3}\npersonalization: /no/lora\n",
         "personalization not found: /no/lora"),
    ],
)  # fmt: skip
def test_bad_presets_are_one_line_in_the_command_and_the_page(studio, tmp_path, capsys, text, message):
    from steerguide.ui.app import build_app

    path = tmp_path / "preset.yaml"
    if text is not None:
        path.write_text(text)
    assert run(["ui", "--preset", str(path)]) == 2  # before any server: nothing listens, nothing blocks
    err = capsys.readouterr().err.strip()
    assert err.startswith("steerguide: error: ") and message in err and "\n" not in err
    if "not found" in message:  # a valid preset: the page fills the controls and says what is missing
        loaded = _call(_handler(build_app(studio), "preset-load"), {"preset-path": str(path)})
        assert "Note: its personalization `/no/lora` is not found here" in loaded["compare-status"]
        assert _filled(loaded)["personalization"] == "/no/lora"
        assert ("Note: it was tuned on base `/other/base`" in loaded["compare-status"]) == ("/other" in text)
        return
    loaded = _call(_handler(build_app(studio), "preset-load"), {"preset-path": str(path)})
    assert loaded["compare-status"].startswith("steerguide: error: --preset") and message in loaded["compare-status"]
    assert "\n" not in loaded["compare-status"] and _filled(loaded) == {}  # the controls stay as they were
