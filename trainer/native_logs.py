"""A clean terminal: TensorFlow's C++ start-up lines and transformers' TF deprecation
notice kept out of the commands' output; `--verbosity=1` or TUNEWELL_VERBOSE=1 keeps all.

Why not TF_CPP_MIN_LOG_LEVEL alone: TensorFlow 2.21 logs through absl's C++ logging,
and every line it writes before absl::InitializeLog() (the oneDNN banner, "Could not
find cuda drivers", "failed call to cuInit ... (303)" on a machine without a GPU, and
the "All log messages before absl::InitializeLog()" header itself, once per shared
library that carries absl: twice here) goes straight to file descriptor 2 whatever the
variable says. Measured on a fresh `make train-local`: 10 such lines, two of them in
the middle of the progress bar, with TF_CPP_MIN_LOG_LEVEL=2 set before the import.

So the filter sits at the file descriptor: fd 2 becomes a pipe read by a small child
process that drops those lines and passes every other line on to the real stderr.
Python's own stderr (tracebacks, warnings, the progress bar, absl's Python logging)
is pointed straight at the real stderr and never goes through the pipe, so nothing
the user needs waits on the filter. A child process rather than a thread: if
TensorFlow aborts the process, the child still reads the abort message to the end
of the pipe and prints it.
"""

import logging
import os
import subprocess
import sys

VERBOSE_ENV = "TUNEWELL_VERBOSE"

# What the filter drops, one pattern per kind of line. C++ INFO and WARNING lines are
# all dropped (what TF_CPP_MIN_LOG_LEVEL=2 asks for and absl ignores); C++ ERROR lines
# only where they are known start-up noise, so a real error still shows.
NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    # absl's prefix: severity, MMDD, time (absl writes 00:00:<epoch seconds> before
    # InitializeLog), thread id, file:line]. E.g. "I0000 00:00:1796472906.348691   31380 port.cc:153] "
    r"^[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] ",
    r"^E\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] .*("
    r"failed call to cuInit|Could not find cuda drivers|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|oneDNN supports DT_\w+ only on platforms with)",
    # TensorFlow's C++ code that still prints through std::cerr without a prefix.
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
)

# The child process: reads the pipe line by line, drops what matches NOISE. It is
# started with -S -E (no site, no environment variables) so it imports nothing of ours.
_FILTER_PROGRAM = """
import os, re, signal, sys
# Ctrl-C and a SIGTERM to the process group are for the trainer, which may still have
# lines to say while it stops; the filter ends when the pipe closes.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile("|".join(sys.argv[1:]))
out = os.fdopen(1, "wb", buffering=0)
for line in os.fdopen(0, "rb"):
    if not noise.search(line.decode("utf-8", "replace").rstrip("\\n")):
        out.write(line)
"""

# transformers says this once per process when a TF model or tensor is made; this
# package is built on those classes on purpose (README: the stack), so it is no news.
_TRANSFORMERS_NOTICE = "TensorFlow and JAX classes are deprecated"
_TRANSFORMERS_LOGGERS = ("transformers.modeling_tf_utils", "transformers.tokenization_utils_base")


def verbose_requested(argv, environ):
    """--verbosity=N / -v N with N >= 1 (absl's own flag), or TUNEWELL_VERBOSE=1."""
    if environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith(("--verbosity=", "-v=")):
            value = arg.split("=", 1)[1]
        elif arg in ("--verbosity", "-v") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return int(value) >= 1
            except ValueError:
                return False  # absl reports the bad value itself
    return False


_filter_child = None


class _DropNotice(logging.Filter):
    def filter(self, record):
        return _TRANSFORMERS_NOTICE not in str(record.msg)


def quiet_for_command():
    """Called by `python -m trainer.X` before TensorFlow loads (trainer/__init__.py)."""
    if verbose_requested(sys.argv, os.environ):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _TRANSFORMERS_LOGGERS:
        logging.getLogger(name).addFilter(_DropNotice())
    _filter_fd2()


def _filter_fd2():
    try:
        real_stderr = os.dup(2)
        child = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _FILTER_PROGRAM, *NOISE],
            stdin=subprocess.PIPE, stdout=real_stderr, stderr=real_stderr, close_fds=True)
    except OSError:
        return  # no filter is better than no command: the lines just show
    global _filter_child
    _filter_child = child  # kept referenced: a collected Popen warns that it still runs
    # The child ends on its own when the last writer of the pipe (this process and any
    # child process that inherited fd 2) exits.
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()
    os.set_inheritable(real_stderr, False)
    sys.stderr.flush()
    sys.stderr = sys.__stderr__ = open(
        real_stderr, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace", closefd=False)
