"""`steerguide ui`: the command; checks its options, then starts the page."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from steerguide.errors import UserError


def ui(
    base: str | None = typer.Option(
        None, help="Base model: hub id, diffusers folder or single-file checkpoint. Default: the toy world's."
    ),
    personalization: Path | None = typer.Option(
        None, help="LoRA, fine-tune or Custom Diffusion path to start Compare with (changeable in the page)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (0.0.0.0: every interface)."),
    port: int = typer.Option(7860, help="Port to serve on."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16"),
    dino: Path | None = typer.Option(
        None, help="DINO ViT weights (a local folder): fidelity scores on real models."
    ),
    clip: Path | None = typer.Option(
        None, help="CLIP weights (a local folder): CLIP-T text scores on real models."
    ),
    preset: Path | None = typer.Option(
        None,
        help="A preset.yaml written by `steerguide tune` (or its folder): sets Compare's method, w, ω and "
        "schedule, and the base and personalization when not given (as `generate --preset`).",
    ),
    workdir: Path = typer.Option(
        Path("steerguide-ui"), help="Where personalizations trained in the page go."
    ),
) -> None:
    """Open a web page to compare CFG, AG and PG side by side, explore a sweep, and train a personalization."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {port}")
    guidance = None
    if preset is not None:  # checked before the server starts, by the loader generate --preset uses
        from steerguide.tune.preset import settings_from_preset

        guidance, base, chosen = settings_from_preset(
            preset, base=base, personalization=str(personalization) if personalization else None
        )
        personalization = Path(chosen) if chosen is not None else None
    given = personalization is not None
    prompt = None
    if not given and preset is None and base in (None, "toy"):  # out of the box: something to compare
        personalization, prompt = _shipped_personalization()
    from steerguide.ui.studio import Studio

    studio = Studio(  # checks the paths and the device before anything is started
        base,
        str(personalization) if personalization else None,
        device=device,
        dtype=dtype,
        workdir=workdir,
        dino=str(dino) if dino else None,
        clip=str(clip) if clip else None,
    )
    from steerguide.files import check_writable

    check_writable(workdir, "--workdir")  # trained personalizations go there: a file or /proc/x is refused now
    _check_can_serve(host, port)
    studio.default_prompt = prompt
    if given:  # whether it fits the base is known only once loaded: before serving
        studio.warm_up()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs gradio: pip install 'steerguide[ui]'") from None
    from steerguide.ui.app import launch

    launch(studio, host=host, port=port, guidance=guidance)


def _shipped_personalization() -> tuple[Path | None, str | None]:
    """The toy world's shipped personalization (of the demo's subject) and one of its subject's prompts,
    so that the page opened with no arguments compares CFG, AG and PG at once."""
    from steerguide.demo import default_subject
    from steerguide.toyworld.assets import shipped_personalizations_path
    from steerguide.toyworld.subjects import get_subject

    name = default_subject()
    found = sorted(p for p in shipped_personalizations_path().glob(f"{name}-*") if (p / "train.json").is_file())
    if not found:
        return None, None
    return found[-1], get_subject(name).eval_prompts()[0]


def _check_can_serve(host: str, port: int) -> None:
    """Bind `host:port` once, as the server will, so that a bad address or a busy port is one line naming
    which, before anything starts (gradio says only that it found no empty port)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host} is not an address or host name") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"cannot serve on {host}:{port}: the port is in use (choose another with --port)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host} is not an address of this machine (127.0.0.1: this machine only; "
                                "0.0.0.0: every interface)") from None
            raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
