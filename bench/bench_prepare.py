"""Benchmark: trainer.prepare's memory and throughput as the corpus grows, and training's
memory from the shards it writes.

    .venv/bin/python bench/bench_prepare.py [--scales 1,10,30] [--runner local]
        [--throughput local:1,local:2,DirectRunner:1,DirectRunner:2] [--base_mb 9.5]

Writes bench/prepare.json and bench/prepare.md. Never run it beside another
benchmark: it times the machine's cores.

The corpus: JSONL files of generated documents of 30-600 words drawn Zipf-like from
a vocabulary mixing Latin, accented Latin, Cyrillic, Greek, CJK and emoji words (so
CPython would store any whole-file string at 4 bytes a character), ~9.5 MB of text
(about 2M tokens) at scale 1, split over 8 files per scale unit (8 at 1x, 240 at 30x:
a real corpus of many files). The tokenizer is a byte-level BPE of 8,192 tokens
trained on 2,000 of the documents (model.build_tiny), outside the timed part.

The memory runs use --runner (default local) in one process per core, as a
user's `trainer.prepare` does; the throughput runs each runner and process count on
the 10x corpus. Each `trainer.prepare` run is the CLI a user runs, in its own process, watched
every 0.2 s: peak memory is the largest sum of RSS over the process and its
children (the DirectRunner's worker processes), so shared pages count more than
once (an upper bound). Tokens/s is the pipeline's own figure (tokens written /
pipeline wall time). The training runs read the 1x and 30x shards for 30 steps
of a 1-layer model, same watch.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

SCRIPTS = {  # (syllables, share of the vocabulary)
    "latin": ([c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"], 0.55),
    "accented": ([c + v for c in "bcdfglmnrst" for v in "àéèêîôûüøå"], 0.15),
    "cyrillic": ([c + v for c in "бвгдклмнпрст" for v in "аеиоуя"], 0.12),
    "greek": ([c + v for c in "βγδκλμνπρστ" for v in "αεηιου"], 0.08),
    "cjk": ([chr(0x4E00 + i) for i in range(0, 2000, 7)], 0.08),
    "emoji": ([chr(0x1F600 + i) for i in range(64)], 0.02),
}
VOCABULARY_WORDS = 40_000


def make_vocabulary(rng) -> np.ndarray:
    words = set()
    for syllables, share in SCRIPTS.values():
        wanted = len(words) + int(VOCABULARY_WORDS * share)
        while len(words) < wanted:
            words.add("".join(rng.choice(syllables, size=rng.integers(1, 4))))
    return np.array(sorted(words))


def write_corpus(folder: str, scale: int, base_mb: float, rng, vocabulary, zipf) -> tuple[str, int]:
    """scale x base_mb of JSONL text in 8 x scale files; returns (glob, bytes)."""
    os.makedirs(folder, exist_ok=True)
    files, per_file = 8 * scale, int(base_mb * 2**20 / 8)
    done = os.path.join(folder, f"COMPLETE-{base_mb}")
    if os.path.exists(done):  # written by an earlier run with these settings (the same seed)
        return os.path.join(folder, "*.jsonl"), int(open(done).read())
    total = 0
    for f in range(files):
        written, lines = 0, []
        while written < per_file:
            words = vocabulary[rng.choice(len(vocabulary), size=int(rng.integers(30, 601)), p=zipf)]
            text = " ".join(words).capitalize() + "."
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            lines.append(line)
            written += len(line.encode())
        with open(os.path.join(folder, f"part-{f:05d}.jsonl"), "w", encoding="utf-8") as out:
            out.writelines(lines)
        total += written
    with open(done, "w") as f:
        f.write(str(total))
    return os.path.join(folder, "*.jsonl"), total


def watch(command: list[str], env=None) -> dict:
    """Run `command`; its wall time, exit status, output, and peak RSS summed over its process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    peak = [0]

    def tree_rss() -> int:
        children = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    children.setdefault(int(fields[1]), []).append(int(pid))
                except OSError:
                    pass
        total, todo = 0, [process.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
            except (OSError, StopIteration):
                pass
        return total

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    return {"seconds": time.perf_counter() - started, "returncode": process.returncode,
            "peak_rss_mb": peak[0] / 2**20, "stdout": stdout, "stderr": stderr}


def prepare(corpus: str, model_dir: str, folder: str, runner: str, workers: int, preflight: str = "warn") -> dict:
    subprocess.run(["rm", "-rf", folder, folder + "-run"])
    run = watch([sys.executable, "-m", "trainer.prepare", "--config=configs/default.py", f"--config.preflight={preflight}",
                 f"--config.data.train_files={corpus}", f"--config.model.name_or_path={model_dir}",
                 "--config.model.bootstrap_tiny=false", "--config.data.block_size=256",
                 f"--config.output_dir={folder}-run", f"--config.data.prepared_dir={folder}",
                 f"--runner={runner}", f"--direct_num_workers={workers}"])
    if run["returncode"] != 0:
        raise SystemExit(f"trainer.prepare failed:\n{run['stderr'][-3000:]}")
    line = next(line for line in run["stdout"].splitlines() + run["stderr"].splitlines() if "tokens/s" in line)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    tokens = sum(manifest["splits"][s]["stats"]["tokens"] for s in ("train", "validation"))
    pipeline_seconds = float(line.split("pipeline ")[1].split(" s")[0])
    return {"runner": runner, "workers": workers, "audit": preflight != "off", "tokens": tokens, "train_rows": manifest["splits"]["train"]["rows"],
            "shards": len(manifest["splits"]["train"]["shards"]), "seconds": round(run["seconds"], 1),
            "pipeline_seconds": pipeline_seconds, "tokens_per_second": round(tokens / pipeline_seconds),
            "peak_rss_mb": round(run["peak_rss_mb"])}


def train(corpus: str, folder: str, model_dir: str, output: str) -> dict:
    run = watch([sys.executable, "-m", "trainer.task", "--config=configs/default.py",
                 f"--config.data.train_files={corpus}",
                 f"--config.data.prepared_dir={folder}", f"--config.model.name_or_path={model_dir}",
                 "--config.model.bootstrap_tiny=false", "--config.data.block_size=256",
                 f"--config.output_dir={output}", "--config.train.max_steps=30", "--config.train.batch_size=8",
                 "--config.eval.num_prompts=0", "--config.preflight=off"])
    if run["returncode"] != 0:
        raise SystemExit(f"trainer.task failed:\n{run['stderr'][-3000:]}")
    return {"seconds": round(run["seconds"], 1), "peak_rss_mb": round(run["peak_rss_mb"])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,10,30")
    parser.add_argument("--runner", default="local", help="trainer.prepare's runner for the memory runs "
                        "(in one process per core)")
    parser.add_argument("--throughput", default="local:1,local:2,DirectRunner:1,DirectRunner:2",
                        help="RUNNER:PROCESSES runs on the throughput corpus")
    parser.add_argument("--throughput_scale", type=int, default=10)
    parser.add_argument("--base_mb", type=float, default=9.5)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench_prepare"))
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    from trainer import model as model_lib
    from configs import default

    rng = np.random.default_rng(0)
    vocabulary = make_vocabulary(rng)
    zipf = 1 / np.arange(1, len(vocabulary) + 1) ** 1.05
    zipf /= zipf.sum()
    model_dir = os.path.join(args.work, "model")
    if not os.path.isdir(model_dir):
        sample = [" ".join(vocabulary[rng.choice(len(vocabulary), size=200, p=zipf)]) for _ in range(2000)]
        tiny = default.get_config().model.tiny
        tiny.n_layer, tiny.n_embd, tiny.n_head, tiny.n_positions, tiny.vocab_size = 1, 64, 2, 256, 8192
        model_lib.build_tiny(model_dir, sample, tiny, seed=0, log=lambda m: None)

    results = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
               "memory": [], "throughput": [], "training": []}
    corpora = {}
    for scale in sorted(set(scales + [args.throughput_scale])):
        corpora[scale] = write_corpus(os.path.join(args.work, f"corpus-{scale}x"), scale, args.base_mb, rng,
                                      vocabulary, zipf)
    for scale in scales:
        folder = os.path.join(args.work, f"prepared-{scale}x")
        subprocess.run(["rm", "-rf", folder, folder + "-run"])
        result = {"scale": scale, "text_mb": round(corpora[scale][1] / 2**20, 1),
                  **prepare(corpora[scale][0], model_dir, folder, args.runner, os.cpu_count())}
        results["memory"].append(result)
        print(json.dumps(result), flush=True)
    for scale in (min(scales), max(scales)):  # the same without the data audit (its sample grows to 100k docs)
        folder = os.path.join(args.work, f"prepared-{scale}x-no-audit")
        result = {"scale": scale, "text_mb": round(corpora[scale][1] / 2**20, 1),
                  **prepare(corpora[scale][0], model_dir, folder, args.runner, os.cpu_count(), "off")}
        results["memory"].append(result)
        print(json.dumps(result), flush=True)
    for runner, workers in [r.split(":") for r in args.throughput.split(",")]:
        folder = os.path.join(args.work, f"prepared-{args.throughput_scale}x-{runner}-{workers}")
        subprocess.run(["rm", "-rf", folder, folder + "-run"])
        result = {"scale": args.throughput_scale, **prepare(corpora[args.throughput_scale][0], model_dir, folder,
                                                            runner, int(workers))}
        results["throughput"].append(result)
        print(json.dumps(result), flush=True)
    for scale in scales:
        output = os.path.join(args.work, f"train-{scale}x")
        subprocess.run(["rm", "-rf", output])
        result = {"scale": scale, **train(corpora[scale][0], os.path.join(args.work, f"prepared-{scale}x"), model_dir,
                                       output)}
        results["training"].append(result)
        print(json.dumps(result), flush=True)
    with open(os.path.join(ROOT, "bench", "prepare.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
