"""`steerguide ui`: a Gradio page to compare CFG, AG and PG, explore a sweep and train a personalization.

    from steerguide.ui import Studio, launch
    launch(Studio())                       # the toy world, on http://127.0.0.1:7860

`studio.Studio` does the work (no Gradio in it); `app` is the page; `cli` registers the command.
"""

from steerguide.ui.studio import Studio


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    from steerguide.ui.app import launch as _launch

    return _launch(studio, host=host, port=port, block=block)


__all__ = ["Studio", "launch"]
