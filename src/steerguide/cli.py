"""The `steerguide` command line: one typer app, each command a thin shell over a library function.

Every user-facing failure is one line on stderr: exit status 2 for bad input (`UserError`, or a usage
error from the parser), 130 for Ctrl-C (`Interrupted` says what was kept and how to continue), and 1 for
anything else, which is a bug in steerguide (`STEERGUIDE_DEBUG=1` shows its traceback). The contract,
command by command, is in docs/cli.md.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import typer

from steerguide import methods
from steerguide.bases import resolve_base
from steerguide.errors import Interrupted, SteerguideWarning, UserError, first_line
from steerguide.quiet import quiet_libraries

# The parser's exceptions live in click (typer < 0.25) or in typer's vendored copy of it (typer._click):
# take them from the module that defines the class typer itself exports, so both layouts work.
_parser_errors = sys.modules[typer.BadParameter.__module__]
ClickException = _parser_errors.ClickException
NoArgsIsHelpError = getattr(_parser_errors, "NoArgsIsHelpError", None)

app = typer.Typer(
    name="steerguide",
    help="Personalization guidance (PG), CFG and autoguidance for personalized text-to-image diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Each sub-package owns its commands and registers them here; imports point from the app down.
_COMMAND_MODULES: list[str] = [
    "steerguide.train.cli",
    "steerguide.evaluate.cli",
    "steerguide.toyworld.cli",
    "steerguide.demo",
    "steerguide.ui.cli",
    "steerguide.tune.cli",
    "steerguide.comfyui.cli",
]


def _version(value: bool) -> None:
    if value:
        from steerguide._version import __version__

        print(f"steerguide {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Personalization guidance (PG), CFG and autoguidance for personalized text-to-image diffusion models."""


@app.command("generate")
def generate_command(
    base: str | None = typer.Option(
        None,
        help="Base model: hub id, diffusers folder or single-file "
        "checkpoint. Default: the embedded toy world's base model.",
    ),
    personalization: Path | None = typer.Option(
        None, help="LoRA file/folder, fine-tuned model folder or file, or Custom Diffusion folder."
    ),
    preset: Path | None = typer.Option(
        None,
        help="A preset.yaml written by `steerguide tune` (or its folder): its method, w, ω and schedule, and "
        "its base and personalization when not given. Options given here win.",
    ),
    method: str | None = typer.Option(None, help=f"{' | '.join(methods.names())} (default pg)."),
    scale: float | None = typer.Option(
        None, help="Guidance scale w, the real CFG scale for every model (Flux: true_cfg_scale; 1 = no guidance; "
        "default 7.5)."
    ),
    distilled_guidance: float | None = typer.Option(
        None, help="Flux's guidance embedding (its guidance_scale, distilled, no CFG; default: the pipeline's)."
    ),
    omega: float | None = typer.Option(
        None,
        help="ω: share of the personalization kept in the weak model "
        "(PG default 0.5, AG default 0.0 = pretrained).",
    ),
    omega_schedule: str | None = typer.Option(
        None,
        help="constant | linear:END | cosine:END | piecewise:T1=V1,T2=V2 (ω starts at --omega; default constant).",
    ),
    allow_extrapolation: bool = typer.Option(False, help="Allow ω outside [0, 1]."),
    guidance_start: float = typer.Option(0.0, help="Apply guidance from this fraction of the steps..."),
    guidance_stop: float = typer.Option(1.0, help="...up to this fraction."),
    guidance_rescale: float = typer.Option(0.0, help="diffusers' guidance_rescale φ (SD, SDXL)."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="Prompt (repeatable)."),
    prompts_file: Path | None = typer.Option(None, help="File with one prompt per line."),
    negative_prompt: str | None = typer.Option(None, help="Negative prompt (replaces the null prompt)."),
    num_images: int = typer.Option(1, help="Images per prompt; image i uses seed + i."),
    num_frames: int | None = typer.Option(
        None, help="Video pipelines (Wan): frames per video (default: the pipeline's); PNGs and a GIF."
    ),
    steps: int = typer.Option(30, help="Sampling steps."),
    seed: int = typer.Option(0, help="Seed of image 0 of every prompt."),
    height: int | None = typer.Option(None, help="Image height (default: the model's)."),
    width: int | None = typer.Option(None, help="Image width (default: the model's)."),
    scheduler: str | None = typer.Option(
        None,
        help="diffusers scheduler name, e.g. DDIM, EulerDiscrete "
        "(default: the one saved with the base model).",
    ),
    batch_size: int = typer.Option(16, help="Images per pipeline call."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16"),
    threads: int | None = typer.Option(
        None, help="CPU threads for torch (default on the CPU: half the cores, at most 4)."
    ),
    out: Path = typer.Option(
        Path("steerguide-out"),
        help="Output folder for the PNGs and run.json. Rerunning the same command into it makes only the "
        "missing images; another run into it is refused unless --overwrite.",
    ),
    overwrite: bool = typer.Option(False, help="Replace the images and run.json of another run in --out."),
) -> None:
    """Generate images with CFG, autoguidance or personalization guidance."""
    from steerguide import limits
    from steerguide.files import read_prompts
    from steerguide.generation import generate
    from steerguide.guidance import GuidanceConfig
    from steerguide.methods.pg import PG
    from steerguide.progress import console

    if guidance_start == guidance_stop:  # start > stop: GuidanceConfig's message
        limits.guidance_interval("guidance interval", guidance_start, guidance_stop)
    common = {
        "interval": (guidance_start, guidance_stop),
        "guidance_rescale": guidance_rescale,
        "allow_extrapolation": allow_extrapolation,
    }
    if preset is not None:
        from steerguide.tune.preset import settings_from_preset

        config, base, chosen = settings_from_preset(
            preset,
            base=base,
            personalization=str(personalization) if personalization is not None else None,
            method=method, scale=scale, omega=omega, omega_schedule=omega_schedule, **common,
        )  # fmt: skip
        personalization = Path(chosen) if chosen is not None else None
    else:
        config = GuidanceConfig(
            method=method or PG.name,
            scale=7.5 if scale is None else scale,
            omega=omega,
            omega_schedule=omega_schedule or "constant",
            **common,
        )
    if not config.spec.takes_omega and (omega is not None or omega_schedule is not None):
        raise UserError(
            "--omega and --omega-schedule are for --method pg or ag: CFG's first term is the personalized "
            "model on the null prompt, which has no ω"
        )
    prompts = read_prompts(prompt, prompts_file)
    record = generate(
        resolve_base(base or "toy"),  # the record names the folder, as before
        str(personalization) if personalization else None,
        config,
        prompts,
        out,
        num_images=num_images,
        seed=seed,
        steps=steps,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        distilled_guidance=distilled_guidance,
        num_frames=num_frames,
        device=device,
        dtype=dtype,
        scheduler=scheduler,
        batch_size=batch_size,
        threads=threads,
        overwrite=overwrite,
    )
    console(stderr=True).print(
        f"{len(record['images'])} images and run.json in {out} "
        f"({record['denoiser_calls']} denoiser calls, {record['denoiser_rows']} rows, "
        f"{record['seconds_denoising']:.2f} s denoising)",
        markup=False,
    )


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_registered = False


def _say(message: str) -> None:
    print(f"steerguide: {message}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SteerguideWarning):
        _say(f"warning: {message}")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` and return its exit status (what `main` exits with).

    The command is parsed and invoked here rather than through typer's `main`, which would turn Ctrl-C
    into a silent exit 130 before a command could say what it kept."""
    global _registered
    quiet_libraries()
    if not _registered:
        _register_commands()
        _registered = True
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    # Commands set torch's CPU threads (--threads); run in-process (tests, notebooks), leave them as found.
    threads_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", SteerguideWarning)  # each distinct message once
            warnings.showwarning = _show_warning
            with command.make_context("steerguide", args) as ctx:
                result = command.invoke(ctx)
    except UserError as e:
        _say(f"error: {e}")
        return 2
    except Interrupted as e:
        _say(f"interrupted: {e}")
        return 130
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except ClickException as e:
        if NoArgsIsHelpError is not None and isinstance(e, NoArgsIsHelpError):  # bare `steerguide`: help
            print(e.format_message(), file=sys.stderr)
            return 0
        _say(f"error: {e.format_message()}")
        return 2
    except typer.Exit as e:  # --version, --help
        return e.exit_code
    except typer.Abort:
        _say("aborted")
        return 1
    except BrokenPipeError:  # `steerguide ... | head`: the reader left; say nothing, as click does
        try:  # no second error when the interpreter flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (captured)
            pass
        return 1
    except Exception as e:  # noqa: BLE001 (last resort: a bug, still one line)
        if os.environ.get("STEERGUIDE_DEBUG"):
            raise
        detail = f": {first_line(e)}" if first_line(e) else ""
        _say(
            f"error: internal error: {type(e).__name__}{detail} "
            "(a bug in steerguide; STEERGUIDE_DEBUG=1 shows the traceback)"
        )
        return 1
    finally:
        if threads_before is not None:
            sys.modules["torch"].set_num_threads(threads_before)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
