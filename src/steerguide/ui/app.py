"""The Gradio page: tabs Compare, Explore a sweep, Personalize, over a `Studio`.

Every handler turns a `UserError` into the CLI's one line ("steerguide: error: ...") in the tab's
status line; the page never shows a traceback. Sampling runs in one queue (concurrency 1) shared by
all users, and the studio's lock backs it up, so concurrent users never mix their samples.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from steerguide.errors import UserError
from steerguide.methods.pg import PG
from steerguide.ui.studio import METHOD_NAMES, MethodImages, Studio, open_sweep, setting_images

DISPLAY_SIZE = 128  # toy images are 32 px: shown enlarged (nearest neighbour), scored at their own size
TOY_PROMPTS = "a sks star on a teal background\na sks star in the top left"
SCHEDULES = ["constant", "linear:1.0", "cosine:1.0", "linear:0.0", "piecewise:0.5=1.0"]


def error_line(error: Exception) -> str:
    """What the CLI prints for this error, as the status line shows it."""
    return f"steerguide: error: {error}"


def preset_controls(config) -> dict:
    """The Compare controls that show a `GuidanceConfig` (from `settings_from_preset`, as `generate --preset`
    reads it): its method alone ticked, its w, its ω on the method's slider, its schedule. Keys: elem ids."""
    controls = {"methods": [METHOD_NAMES[config.method]], "scale": float(config.scale)}
    if config.spec.takes_omega:
        controls["omega" if config.method == PG.name else "ag-omega"] = float(config.omega)
        controls["schedule"] = config.omega_schedule
    else:
        controls["schedule"] = "constant"
    return controls


def read_page_preset(studio: Studio, path: str | None) -> tuple[str, dict]:
    """(status line, controls to set) for a preset loaded in the page; a bad preset raises `UserError`."""
    from steerguide.tune.preset import settings_from_preset

    path = (path or "").strip()
    if not path:
        raise UserError(
            "no preset given: write the path of a preset.yaml (or its tune folder), or upload one"
        )
    config, base, personalization = settings_from_preset(Path(path).expanduser())
    controls = preset_controls(config)
    if personalization is not None:
        controls["personalization"] = personalization
    status = f"Loaded preset {path}: {controls['methods'][0]} w={config.scale:g}" + (
        f" ω={config.omega:g} {config.omega_schedule}" if config.spec.takes_omega else ""
    )
    if personalization is not None and not Path(personalization).expanduser().exists():
        status += f". Note: its personalization `{personalization}` is not found here"
    if base is not None and not studio.serves(base):
        status += f". Note: it was tuned on base `{base}`; this page serves `{studio.base}` (start `steerguide ui --preset` to use its base)"
    return status + ".", controls


def _shown(image: Image.Image) -> Image.Image:
    if max(image.size) >= DISPLAY_SIZE:
        return image
    factor = max(1, DISPLAY_SIZE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _caption(row: MethodImages, i: int) -> str:
    shown = {"fidelity": "fid", "text": "text"}
    parts = [f"{short} {row.scores[i][name]:.2f}" for name, short in shown.items() if name in row.scores[i]]
    return " · ".join(parts) or f"seed {row.seeds[i]}"


def _row_label(row: MethodImages) -> str:
    means = [f"{n} {row.mean(n):.2f}" for n in ("fidelity", "text") if row.mean(n) is not None]
    return row.label + (f" (mean {', '.join(means)})" if means else "")


def build_app(studio: Studio, guidance=None):
    """The page; `guidance` (a `GuidanceConfig`, from `steerguide ui --preset`) sets the Compare controls."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    import gradio as gr

    plot_dir = Path(tempfile.mkdtemp(prefix="steerguide-ui-"))
    start = preset_controls(guidance) if guidance is not None else {}
    sweeps: dict[str, object] = {}

    with gr.Blocks(title="steerguide") as demo:
        gr.Markdown(
            "## steerguide: CFG, autoguidance and personalization guidance side by side\n"
            f"Base model: `{'the toy world' if studio.toy else studio.base}`"
        )
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                prompts = gr.Textbox(
                    label="Prompts (one per line)",
                    lines=3,
                    value=getattr(studio, "default_prompt", None)  # the shipped personalization's
                    or ("a sks star on a blue background" if studio.toy else "a photo of sks dog on the beach"),
                    elem_id="prompts",
                )
                with gr.Column():
                    negative = gr.Textbox(label="Negative prompt", value="", elem_id="negative")
                    personalization = gr.Textbox(
                        label="Personalization (LoRA / fine-tune path)",
                        value=studio.personalization or "",
                        elem_id="personalization",
                    )
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                steps = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="steps")
                num_images = gr.Slider(1, 8, value=2, step=1, label="Images per prompt", elem_id="num-images")
            with gr.Row():
                methods = gr.CheckboxGroup(
                    list(METHOD_NAMES.values()),
                    value=start.get("methods", list(METHOD_NAMES.values())),
                    label="Methods",
                    elem_id="methods",
                )
                scale = gr.Slider(
                    1.0,
                    15.0,
                    value=start.get("scale", 5.0),
                    step=0.5,
                    label="w (guidance scale)",
                    elem_id="scale",
                )
                omega = gr.Slider(
                    0.0, 1.0, value=start.get("omega", 0.5), step=0.05, label="ω (PG)", elem_id="omega"
                )
                ag_omega = gr.Slider(
                    0.0,
                    1.0,
                    value=start.get("ag-omega", 0.0),
                    step=0.05,
                    label="ω (AG weak model)",
                    elem_id="ag-omega",
                )
                schedule = gr.Dropdown(
                    SCHEDULES,
                    value=start.get("schedule", "constant"),
                    allow_custom_value=True,
                    label="ω schedule (ω starts at the slider's value)",
                    elem_id="schedule",
                )
            with gr.Row():
                preset_path = gr.Textbox(
                    label="Preset (a preset.yaml from steerguide tune, or its folder)", elem_id="preset-path"
                )
                preset_file = gr.File(
                    label="...or upload one",
                    file_types=[".yaml", ".yml"],
                    type="filepath",
                    elem_id="preset-file",
                )
                load_preset_button = gr.Button("Load preset", elem_id="preset-load")
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Markdown("", elem_id="compare-status")
            galleries = {
                m: gr.Gallery(
                    label=name,
                    columns=8,
                    height=200,
                    object_fit="contain",
                    elem_id=f"gallery-{m}",
                    format="png",
                )
                for m, name in METHOD_NAMES.items()
            }

        with gr.Tab("Explore a sweep", id="sweep"):
            with gr.Row():
                sweep_folder = gr.Textbox(label="Sweep folder (holds results.jsonl)", elem_id="sweep-folder")
                open_button = gr.Button("Open", elem_id="sweep-open")
            sweep_status = gr.Markdown("", elem_id="sweep-status")
            with gr.Row():
                plot = gr.Image(label="Trade-off", type="filepath", elem_id="sweep-plot")
                with gr.Column():
                    point = gr.Dropdown([], label="Setting (a point of the plot)", elem_id="sweep-point")
                    chosen = gr.Gallery(
                        label="This setting", columns=6, height="auto", elem_id="sweep-chosen"
                    )
                    cfg_twins = gr.Gallery(
                        label="CFG at the same seeds", columns=6, height="auto", elem_id="sweep-cfg"
                    )

        with gr.Tab("Personalize", id="personalize"):
            sources = ["toy subject", "photo folder"] if studio.toy else ["photo folder"]
            source = gr.Radio(sources, value=sources[0], label="Train on", elem_id="train-source")
            with gr.Row():
                from steerguide import toyworld

                subject = gr.Dropdown(
                    list(toyworld.SUBJECTS),
                    value="sks_star",
                    label="Toy subject",
                    visible=studio.toy,
                    elem_id="train-subject",
                )
                photos = gr.Textbox(label="Photo folder", elem_id="train-photos")
                token = gr.Textbox(label="Token", value="sks", elem_id="train-token")
                class_noun = gr.Textbox(label="Class noun", value="", elem_id="train-class")
                train_steps = gr.Number(
                    label="Steps (empty: the default)", value=None, precision=0, elem_id="train-steps"
                )
            train_button = gr.Button("Train a LoRA", variant="primary", elem_id="train")
            train_status = gr.Markdown("", elem_id="train-status")

        # -- handlers ----------------------------------------------------------------------------------------
        def run_compare(
            prompts_text, negative_text, personalization_path, seed_value, steps_value, n_value,
            method_names, w, om, ag_om, schedule_text, progress=gr.Progress(),
        ):  # fmt: skip
            empty = {m: gr.update(value=None, label=METHOD_NAMES[m]) for m in METHOD_NAMES}
            try:
                rows = studio.compare(
                    prompts_text.splitlines(),
                    methods=[m.lower() for m in method_names or []],
                    scale=w,
                    omega=om,
                    ag_omega=ag_om,
                    omega_schedule=schedule_text,
                    negative_prompt=negative_text,
                    seed=seed_value,
                    steps=steps_value,
                    num_images=n_value,
                    personalization=personalization_path,
                    on_progress=lambda done, total, what: progress((done, total), desc=f"sampling {what}"),
                )
            except UserError as e:
                return [error_line(e)] + [empty[m] for m in METHOD_NAMES]
            out = dict(empty)
            for row in rows:
                out[row.method] = gr.update(
                    value=[(_shown(im), _caption(row, i)) for i, im in enumerate(row.images)],
                    label=_row_label(row),
                )
            done = ", ".join(_row_label(r) for r in rows)
            seeds = sorted(set(rows[0].seeds))
            seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
            return [f"Done: {done}. Each prompt: {seed_text}, left to right, the same in every row."] + [
                out[m] for m in METHOD_NAMES
            ]

        generate.click(
            run_compare,
            inputs=[
                prompts,
                negative,
                personalization,
                seed,
                steps,
                num_images,
                methods,
                scale,
                omega,
                ag_omega,
                schedule,
            ],
            outputs=[status, *galleries.values()],
            concurrency_limit=1,
            concurrency_id="pipeline",
        )

        preset_outputs = [status, methods, scale, omega, ag_omega, schedule, personalization]

        def load_preset(path_text, uploaded=None):
            """Fill the Compare controls from a preset (the path typed, or the file uploaded)."""
            try:
                line, controls = read_page_preset(studio, uploaded or path_text)
            except UserError as e:
                return [error_line(e)] + [gr.update() for _ in preset_outputs[1:]]
            return [line] + [
                gr.update(value=controls[c.elem_id]) if c.elem_id in controls else gr.update()
                for c in preset_outputs[1:]
            ]

        load_preset_button.click(load_preset, inputs=[preset_path], outputs=preset_outputs)
        preset_file.upload(load_preset, inputs=[preset_path, preset_file], outputs=preset_outputs)

        def run_open(folder):
            try:
                view = open_sweep(folder, plot_dir)
            except UserError as e:
                return error_line(e), None, gr.update(choices=[], value=None), None, None
            sweeps["current"] = view
            names = list(view.settings)
            return (
                f"{len(view.rows)} images, {len(names)} settings; x: {view.x_metric}, y: {view.y_metric}",
                str(view.plot),
                gr.update(choices=names, value=None),
                None,
                None,
            )

        open_button.click(
            run_open, inputs=[sweep_folder], outputs=[sweep_status, plot, point, chosen, cfg_twins]
        )

        def run_point(name):
            view = sweeps.get("current")
            if view is None or not name:
                return "", None, None
            try:
                left, right = setting_images(view, name)
            except UserError as e:
                return error_line(e), None, None
            return (
                f"{name}: {len(left)} images",
                [(_shown(im), c) for im, c in left],
                [(_shown(im), c) for im, c in right],
            )

        point.change(run_point, inputs=[point], outputs=[sweep_status, chosen, cfg_twins])

        def run_train(
            source_name,
            subject_name,
            photo_folder,
            token_text,
            class_text,
            step_count,
            progress=gr.Progress(),
        ):
            try:
                folder = studio.train(
                    toy_subject=subject_name if source_name == "toy subject" else None,
                    photos=photo_folder if source_name == "photo folder" else None,
                    token=token_text or "",
                    class_noun=class_text or "",
                    steps=step_count or None,
                    on_progress=lambda done, total, what: progress((done, total), desc=what),
                )
            except UserError as e:
                return error_line(e), gr.update()
            return f"Trained: `{folder}`; it is now the personalization in Compare.", str(folder)

        train_button.click(
            run_train,
            inputs=[source, subject, photos, token, class_noun, train_steps],
            outputs=[train_status, personalization],
            concurrency_limit=1,
            concurrency_id="train",
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def launch(
    studio: Studio,
    host: str = "127.0.0.1",
    port: int = 7860,
    warm: bool = True,
    block: bool = True,
    guidance=None,
):
    """Start the page; the default pipeline then loads in the background (the page answers at once)."""
    import threading

    demo = build_app(studio, guidance)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            ssr_mode=False,
            show_error=False,
            quiet=True,
            prevent_thread_lock=True,
            footer_links=[],
        )
    except OSError as e:
        reason = "the port is in use (choose another with --port)" if "empty port" in str(e) else str(e)
        raise UserError(f"cannot serve on {host}:{port}: {reason}") from None
    if warm:  # after the server is up, so that loading does not delay the first page
        threading.Thread(target=_warm, args=(studio,), daemon=True).start()
    if block:
        print(f"steerguide ui: serving on http://{host}:{port} (Ctrl+C stops)", file=sys.stderr, flush=True)
        demo.block_thread()
    return demo


def _warm(studio: Studio) -> None:
    try:
        studio.warm_up()
    except UserError:
        pass  # the same error reaches the user, as one line, on their first request
