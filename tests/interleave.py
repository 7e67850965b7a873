"""A forced interleaving of two pipeline calls on one shared UNet, for the race tests.

`plain()` runs in one thread and pauses in the middle of its first denoiser pass (at the UNet's mid
block); `guided()` runs in another and, once its call reaches the same layer while `weak_now()` holds
(its weak pass, with θ_ω in place), lets the plain call go on and waits for it to finish. A call that
waits for the other thread instead of racing with it makes each wait time out after `wait` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def interleave(unet, plain: Callable[[], Any], guided: Callable[[], Any],
               weak_now: Callable[[], bool] = lambda: True, wait: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """{"plain": plain(), "guided": guided()}, each run in its own thread with the interleaving forced."""
    plain_thread: list[threading.Thread] = []
    plain_paused, weak_inside, plain_done = threading.Event(), threading.Event(), threading.Event()

    def middle(module, args):
        me = threading.current_thread()
        if me is plain_thread[0] and not plain_paused.is_set():
            plain_paused.set()
            weak_inside.wait(wait)
        elif me is not plain_thread[0] and plain_paused.is_set() and not weak_inside.is_set() and weak_now():
            weak_inside.set()
            plain_done.wait(wait)

    def after(module, args, output):
        if threading.current_thread() is plain_thread[0]:
            plain_done.set()

    got: dict[str, Any] = {}
    hooks = [unet.mid_block.register_forward_pre_hook(middle), unet.register_forward_hook(after)]
    try:
        plain_thread.append(threading.Thread(target=lambda: got.setdefault("plain", plain())))
        plain_thread[0].start()
        assert plain_paused.wait(30), "the plain call never reached the UNet's mid block"
        guided_thread = threading.Thread(target=lambda: got.setdefault("guided", guided()))
        guided_thread.start()
        plain_thread[0].join(60)
        guided_thread.join(60)
    finally:
        for h in hooks:
            h.remove()
    assert set(got) == {"plain", "guided"}, f"a call did not finish: {sorted(got)}"
    return got
