"""Fault injection for the test suite: a real SIGKILL, or a NaN, at a named instant.

    TUNEWELL_FAULT=POINT[@STEP][+SECONDS]

kills this process with SIGKILL when the run reaches POINT (at optimizer step
STEP, if given); with +SECONDS the kill comes that long after the point is
reached, while the work that follows it (a checkpoint write, say) is under
way. POINT is one of the names passed to `point()` below (train_step,
checkpoint_save, after_checkpoint_save, best_save, after_best_save,
export_write, export_swap, after_export), or `nan_grad@STEP`, which turns
every gradient of that step into NaN while the loss stays finite.

Unset (every normal run) each call is one dictionary look-up and nothing else;
the training graph is the same as without this module.
"""

import os
import signal
import threading

_SPEC = os.environ.get("TUNEWELL_FAULT", "")


def _parse(spec: str):
    if not spec:
        return None, None, 0.0
    name, _, rest = spec.partition("@")
    step, _, delay = rest.partition("+")
    if not step and "+" in name:
        name, _, delay = name.partition("+")
    return name, int(step) if step else None, float(delay or 0.0)


_NAME, _STEP, _DELAY = _parse(_SPEC)


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str, step: int | None = None, through: int | None = None) -> None:
    """A place where the fault suite may kill the run; [step, through] is the range of
    optimizer steps about to run (one compiled call may run several)."""
    if _NAME != name or (_STEP is not None and not step <= _STEP <= (through or step)):
        return
    if _DELAY:
        threading.Timer(_DELAY, _kill).start()
    else:
        _kill()


def nan_gradient_step() -> int | None:
    """The 1-based optimizer step whose gradients become NaN (TUNEWELL_FAULT=nan_grad@STEP)."""
    return _STEP if _NAME == "nan_grad" else None
