"""The terminal: one line per message, and the progress bar (kept out of the way of both)."""


def say(message: str) -> None:
    """Print a line without breaking an active progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def progress_bar(total: int, initial: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="Training", dynamic_ncols=True,
                disable=not enabled)


def set_total(bar, total: int) -> None:
    """A new end for the bar (wsd's decay, started by validation, ends the run sooner)."""
    bar.total = total
    bar.refresh()
