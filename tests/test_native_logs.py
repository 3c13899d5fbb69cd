"""A clean terminal: a command's stderr holds none of TensorFlow's C++ start-up lines,
CUDA probes or transformers' TF deprecation notice; --verbosity=1 / TUNEWELL_VERBOSE=1
brings them back; a real native error and an abort's last words still get through."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_args, run_cli, small_config
from trainer import native_logs

# Each of these was on the stderr of `make train-local` before the filter (issue 24),
# some twice and two in the middle of the progress bar.
NOISE_SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796472784.926413   31050 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796472784.926771   31050 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "E0000 00:00:1796472786.848648   31050 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1796472798.454288   31050 util.cc:131] oneDNN supports DT_INT32 only on platforms with "
    "AVX-512. Falling back to the default Eigen-based implementation if present.",
]
KEPT = [
    "E0000 00:00:1796472798.454288   31050 bfc_allocator.cc:485] Allocator (mklcpu) ran out of memory",
    "F0000 00:00:1796472798.454288   31050 tensor_shape.cc:587] Check failed: size >= 0",
    "Traceback (most recent call last):",
    "error: data.train_files: no file matches 'x.jsonl'",
]
# What must not be on a quiet command's stderr.
FORBIDDEN = re.compile(r"absl::InitializeLog|cuInit|cuda drivers|oneDNN|classes are deprecated|^[IWE]\d{4} ",
                       re.MULTILINE)


def test_the_filter_drops_start_up_noise_and_keeps_real_errors():
    noise = re.compile("|".join(native_logs.NOISE))
    assert [line for line in NOISE_SEEN if not noise.search(line)] == []
    assert [line for line in KEPT if noise.search(line)] == []


@pytest.mark.parametrize("argv,environ,verbose", [
    (["-m"], {}, False),
    (["x", "--verbosity=1"], {}, True),
    (["x", "-v", "2"], {}, True),
    (["x", "--verbosity=0"], {}, False),
    (["x"], {"TUNEWELL_VERBOSE": "1"}, True),
    (["x"], {"TUNEWELL_VERBOSE": "0"}, False),
])
def test_verbosity_brings_the_lines_back(argv, environ, verbose):
    assert native_logs.verbose_requested(argv, environ) is verbose


def test_an_abort_still_says_its_last_words():
    """The filter is a child process: when TensorFlow aborts the process mid-line, what
    it wrote to fd 2 before dying still reaches the terminal; the noise does not."""
    program = (
        "import os, sys\n"
        "from trainer import native_logs\n"
        "native_logs.quiet_for_command()\n"
        f"os.write(2, {NOISE_SEEN[3]!r}.encode() + b'\\n')\n"
        f"os.write(2, {KEPT[1]!r}.encode() + b'\\n')\n"
        "print('python says', file=sys.stderr)\n"
        "os.abort()\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert KEPT[1] in done.stderr and "python says" in done.stderr
    assert "cuInit" not in done.stderr


def test_a_training_command_has_a_clean_terminal(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "quiet", corpus_file, tiny_model_dir, **{"train.epochs": 1})
    quiet = run_cli("trainer.task", *cli_args(config), timeout=180)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert FORBIDDEN.findall(quiet.stderr) == []
    # Each message once: every line but the progress bar's redraws is unique.
    lines = [line for line in quiet.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("Training:")]
    assert len(lines) == len(set(lines)), lines

    # The same command asked to be verbose shows what was filtered: the filter, not the
    # build of TensorFlow on this machine, is what made the terminal clean.
    config = small_config(tmp_path / "verbose", corpus_file, tiny_model_dir, **{"train.epochs": 1})
    verbose = run_cli("trainer.task", *cli_args(config), "--verbosity=1", timeout=180)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert re.search(r"oneDNN|cuda drivers|cuInit|classes are deprecated", verbose.stderr)
