"""Child processes that die with their parent (the embedded Redis, the demo's server)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for a child process that must not outlive this one.

    The child gets a process group of its own, so that a terminal's Ctrl-C or
    hang-up reaches only this process, which stops its children in order. On
    Linux the kernel also sends the child `sig` when this process dies for any
    reason, SIGKILL included (PR_SET_PDEATHSIG). That signal follows the
    *thread* that forked the child, so it is only set when forking from the
    main thread.
    """
    parent = os.getpid()
    prctl = _prctl() if threading.current_thread() is threading.main_thread() else None

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the death signal was set
                os._exit(1)

    return preexec
