"""Peak memory and wall time of preparing and training, on 1x, 3x and 10x corpora.

    .venv/bin/python bench/bench_memory.py [--tokens 2000000] [--scales 1,3,10] [--steps 60] [--keep]

Writes bench/memory.json and bench/memory.md. About 8 minutes on 2 cores for
the defaults (2M, 6M and 20M tokens; measured 7 min 35 s, 9 min with other work
sharing the cores), of which the 20M-token corpus takes ~3.5 (preparing it 1). The 3x
corpus is the first whose training rows (44,497) overflow the trainer's shuffle
buffer (64 MB / (128 tokens x 3 arrays x 4 bytes) = 43,690 rows), so 3x -> 10x
shows the plateau. See bench/memory.md for the figures.

The question: does training from prepared shards (`python -m trainer.prepare`,
then the trainer with --config.data.prepared_dir) keep the same memory when the
corpus grows tenfold, where training from raw files (tokenized in memory at
launch) does not? The smallest corpus, 2M tokens, is already 50x the embedded
sample (data/sample/corpus.jsonl, ~42k tokens) and 200x what the tests train on.

For each corpus, one child process at a time (never two on a 2-core machine):
    prepare            python -m trainer.prepare -> shards in WORK/prepared-Nx
    train_shards       python -m trainer.task --config.data.prepared_dir=WORK/prepared-Nx
    train_raw          python -m trainer.task on the JSONL itself
    prepare_no_doctor  trainer.prepare with --config.preflight=off (no data audit)
All use configs/local.py (tiny GPT-2, block_size 128); the training runs take
--steps steps with an evaluation every steps/2 and the pre-flight doctor off.
Peak memory is the child's own ru_maxrss, read with os.wait4 on that child
alone (RUSAGE_CHILDREN would be the maximum over every child so far).

The corpora are generated here (nothing is downloaded): JSONL documents of
lognormal length (median 90 words, mean ~123, 1 in 800 over 1,000) drawn
Zipf-like from 4,000 made-up words, with sentences, capitals, numbers and names.
The tiny model's 2,048-token BPE is trained once, on a 5,000-document
calibration corpus whose tokens per word then size the measured corpora
(measured 1.27 tokens a word, so 2M tokens is 1.57M words in 12,847 documents).

The work folder (corpora, shards, runs, logs) is removed at the end unless --keep.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCABULARY_WORDS = 4_000
SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ea", "ou")]
NAMES = "Alice Bruno Chen Dana Emeka Farah Goran Hana Ivan Jules Kiri Lena".split()
# Lognormal words per document: median e^mu = 90, sigma 0.8 puts the mean at
# 90 x e^(0.8^2/2) = 124 and 1 document in 200 above 700 words (several blocks).
MEDIAN_WORDS, SIGMA = 90, 0.8
CALIBRATION_DOCS = 5_000
STAGES = ("prepare", "train_shards", "train_raw", "prepare_no_doctor")


# ----------------------------------------------------------------------------- corpora


def make_vocabulary(rng: np.random.Generator) -> np.ndarray:
    """Distinct pseudo-words of 1-3 syllables, shortest first (in random order within a
    length), so the Zipf weights make short words common as in English."""
    words = set()
    while len(words) < VOCABULARY_WORDS:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))))
    words = sorted(words)
    rank = dict(zip(words, rng.permutation(len(words))))
    return np.array(sorted(words, key=lambda w: (len(w), rank[w])))


def document(words: list[str], rng: np.random.Generator) -> str:
    """Words as sentences of ~12 words, with a number and a name now and then."""
    if rng.random() < 0.3:
        words[rng.integers(len(words))] = str(rng.integers(1, 10_000))
    if rng.random() < 0.3:
        words[rng.integers(len(words))] = str(rng.choice(NAMES))
    for i in range(0, len(words), 12):
        words[i] = words[i].capitalize()
        if i:
            words[i - 1] += "."
    return " ".join(words) + "."


def write_corpus(path: str, words: int, seed: int) -> dict:
    """A JSONL corpus of about `words` words, written 10,000 documents at a time."""
    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(np.random.default_rng(0))  # one vocabulary for every corpus
    zipf = 1.0 / np.arange(1, VOCABULARY_WORDS + 1) ** 1.05
    zipf /= zipf.sum()
    documents = written = 0
    with open(path, "w") as f:
        while written < words:
            lengths = np.clip(rng.lognormal(np.log(MEDIAN_WORDS), SIGMA, 10_000), 5, 5_000).astype(int)
            lengths = lengths[: np.searchsorted(np.cumsum(lengths), words - written) + 1]
            drawn = vocabulary[rng.choice(VOCABULARY_WORDS, size=lengths.sum(), p=zipf)].tolist()
            starts = np.concatenate([[0], np.cumsum(lengths)])
            for start, stop in zip(starts[:-1], starts[1:]):
                f.write(json.dumps({"text": document(drawn[start:stop], rng)}) + "\n")
            documents += len(lengths)
            written += int(lengths.sum())
    return {"documents": documents, "words": written, "bytes": os.path.getsize(path)}


# ----------------------------------------------------------------------------- measuring


def measure(command: list[str], log_path: str) -> dict:
    """Run `command` from the repository root; its peak RSS and wall time.

    os.wait4 gives the rusage of this one child (and any children it waited
    for), so each figure is that command's own peak, not the bench's."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    seconds = time.perf_counter() - started
    if child.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        sys.exit(f"{' '.join(command)}\nfailed with exit code {child.returncode}; end of {log_path}:\n{tail}")
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": round(seconds, 1)}  # Linux: KiB


def config_flags(work: str, corpus: str) -> list[str]:
    """configs/local.py on `corpus`, with the tiny model built once in the work folder."""
    return ["--config=configs/local.py", f"--config.data.train_files={corpus}",
            f"--config.model.name_or_path={work}/tiny-gpt2"]


def prepare_command(work: str, corpus: str, prepared: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.prepare", *config_flags(work, corpus),
            f"--config.data.prepared_dir={prepared}", f"--config.output_dir={work}/runs/unused", *extra]


def train_command(work: str, corpus: str, output_dir: str, steps: int, prepared: str = "") -> list[str]:
    return [sys.executable, "-m", "trainer.task", *config_flags(work, corpus),
            f"--config.data.prepared_dir={prepared}", f"--config.output_dir={output_dir}",
            f"--config.train.max_steps={steps}", f"--config.train.eval_every_steps={steps // 2}",
            "--config.preflight=off"]


def calibrate(work: str) -> float:
    """Build the tiny model (tokenizer trained on a calibration corpus); its tokens per word."""
    corpus = os.path.join(work, "calibration.jsonl")
    written = write_corpus(corpus, round(CALIBRATION_DOCS * MEDIAN_WORDS * np.exp(SIGMA**2 / 2)), seed=1_000)
    prepared = os.path.join(work, "prepared-calibration")
    figures = measure(prepare_command(work, corpus, prepared), os.path.join(work, "calibration.log"))
    with open(os.path.join(prepared, "manifest.json")) as f:
        splits = json.load(f)["splits"]
    tokens = sum(splits[s]["stats"]["tokens"] for s in ("train", "validation"))
    print(f"calibration: {written['documents']:,} documents, {written['words']:,} words -> {tokens:,} tokens "
          f"({tokens / written['words']:.2f} a word); prepared, building the tiny model, in "
          f"{figures['wall_seconds']:.0f} s")
    return tokens / written["words"]


def measure_corpus(work: str, scale: int, tokens: int, tokens_per_word: float, steps: int) -> dict:
    """Generate the corpus, then run each of STAGES on it in turn; its sizes and figures."""
    name = f"{scale}x"
    corpus, prepared = os.path.join(work, f"corpus-{name}.jsonl"), os.path.join(work, f"prepared-{name}")
    started = time.perf_counter()
    written = write_corpus(corpus, round(tokens / tokens_per_word), seed=scale)
    print(f"{name}: generated {written['documents']:,} documents ({written['bytes'] / 2**20:,.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s")
    # trainer.prepare runs the doctor's data audit over every document (the trainer
    # cannot, on shards); prepare_no_doctor skips it, to show what the audit costs.
    without_doctor = f"{prepared}-no-doctor"
    commands = {
        "prepare": prepare_command(work, corpus, prepared),
        "train_shards": train_command(work, corpus, f"{work}/runs/shards-{name}", steps, prepared),
        "train_raw": train_command(work, corpus, f"{work}/runs/raw-{name}", steps),
        "prepare_no_doctor": prepare_command(work, corpus, without_doctor, "--config.preflight=off"),
    }
    figures = {}
    for stage, command in commands.items():
        figures[stage] = measure(command, os.path.join(work, f"{stage}-{name}.log"))
        print(f"  {stage:<17} peak {figures[stage]['peak_rss_bytes'] / 2**20:7,.0f} MB"
              f"  {figures[stage]['wall_seconds']:6.1f} s")
    shutil.rmtree(without_doctor)  # the same shards again
    with open(os.path.join(prepared, "manifest.json")) as f:
        splits = json.load(f)["splits"]
    shards = [os.path.join(prepared, n) for n in os.listdir(prepared) if n.endswith(".tfrecord")]
    return {
        "scale": scale,
        "tokens": sum(splits[s]["stats"]["tokens"] for s in ("train", "validation")),
        "documents": sum(splits[s]["stats"]["documents"] for s in ("train", "validation")),
        "words": written["words"],
        "jsonl_bytes": written["bytes"],
        "train_rows": splits["train"]["rows"],
        "validation_rows": splits["validation"]["rows"],
        "shards": len(splits["train"]["shards"]),
        "shard_bytes": sum(os.path.getsize(p) for p in shards),
        **figures,
    }


# ----------------------------------------------------------------------------- reporting


def commit() -> str:
    """The commit measured, marked "+changes" when trainer/ or configs/ differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "trainer", "configs")
                                                  else "")


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])  # MemTotal
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory_kib * 1024,
            "python": platform.python_version(), "tensorflow": metadata.version("tensorflow")}


def conclusions(sizes: list[dict]) -> list[str]:
    """Two sentences: each stage's peak on the largest corpus against the smallest."""
    small, large = sizes[0], sizes[-1]

    def growth(stage):
        a, b = small[stage]["peak_rss_bytes"], large[stage]["peak_rss_bytes"]
        per_token = (b - a) / (large["tokens"] - small["tokens"])
        return f"{b / a:.2f}x ({a / 2**20:,.0f} -> {b / 2**20:,.0f} MB, {per_token:+.0f} bytes per extra token)"

    return [f"For {large['tokens'] / small['tokens']:.1f}x the data ({small['tokens'] / 1e6:.1f}M -> "
            f"{large['tokens'] / 1e6:.1f}M tokens) the peak memory of training from prepared shards was "
            f"{growth('train_shards')}, of training from the raw files {growth('train_raw')}.",
            f"Preparing, which holds the whole tokenized corpus in memory, peaked at {growth('prepare')} with the "
            f"doctor's data audit and {growth('prepare_no_doctor')} without it (--config.preflight=off)."]


def markdown(result: dict) -> str:
    m = result["machine"]
    load = result["load_average"]
    lines = ["# Peak memory of preparing and training (bench/bench_memory.py)", "",
             f"Commit {result['commit']}; {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GB; "
             f"Python {m['python']}, TensorFlow {m['tensorflow']}. configs/local.py (tiny GPT-2, block_size "
             f"128); each training run is {result['steps']} steps of 16 rows with evaluations at 0, "
             f"{result['steps'] // 2} and {result['steps']} (pre-flight doctor off). Peak = the process's "
             f"maximum resident set size (MB = 2^20 bytes). Load average {load[0]:.1f} before and "
             f"{load[1]:.1f} after on {m['cores']} cores: other work slows the wall times, not the peaks.", "",
             "| corpus | tokens | documents | JSONL | training rows | shards | prepare | train from shards "
             "| train from raw files | prepare, no doctor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["sizes"]:
        cells = [f"{s[stage]['peak_rss_bytes'] / 2**20:,.0f} MB, {s[stage]['wall_seconds']:.0f} s"
                 for stage in STAGES]
        lines.append(f"| {s['scale']}x | {s['tokens']:,} | {s['documents']:,} | "
                     f"{s['jsonl_bytes'] / 2**20:,.0f} MB | {s['train_rows']:,} | "
                     f"{s['shards']} ({s['shard_bytes'] / 2**20:,.0f} MB) | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *conclusions(result["sizes"]), ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens of the 1x corpus")
    parser.add_argument("--scales", default="1,3,10", help="corpus sizes as multiples of --tokens")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run")
    parser.add_argument("--work", default="/tmp/tunewell-bench-memory", help="work folder, emptied first")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "memory"), help=".json and .md prefix")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    started, load_before, measured = time.perf_counter(), os.getloadavg()[0], commit()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    tokens_per_word = calibrate(args.work)
    sizes = [measure_corpus(args.work, int(scale), int(scale) * args.tokens, tokens_per_word, args.steps)
             for scale in args.scales.split(",")]
    result = {"commit": measured, "machine": machine(), "steps": args.steps,
              "tokens_per_word": round(tokens_per_word, 3), "sizes": sizes,
              "total_seconds": round(time.perf_counter() - started),
              # Other work on the machine slows the wall times, not the peaks: the 1-minute
              # load average before and after, against the core count.
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    if not args.keep:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
