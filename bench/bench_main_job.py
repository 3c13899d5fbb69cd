"""Benchmark: the main job (`make train-local`) against its targets.

    .venv/bin/python bench/bench_main_job.py [--runs 2]

Runs `python -m trainer.task --config=configs/local.py` into fresh output folders
(the package already installed: the install is measured apart, README "Speed") and
reads each run's report.json timing. Targets (issue 24): the run at most 45 s, at
least 70% of it training, the first training step at most 10 s after launch; and
the end-of-run diagnosis healthy. Writes bench/main_job.json and bench/main_job.md.
Never run it beside another training: the 2 cores are the measurement.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TARGETS = {"wall_seconds": 45.0, "training_share": 0.70, "first_step_seconds": 10.0}


def one_run(output: str) -> dict:
    started = time.time()
    subprocess.run([sys.executable, "-m", "trainer.task", "--config=configs/local.py",
                    f"--config.output_dir={output}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    process_seconds = time.time() - started
    report = json.load(open(os.path.join(output, "report.json")))
    timing = report["timing"]
    return {"process_seconds": round(process_seconds, 1),
            **{k: round(v, 3 if k == "training_share" else 1) for k, v in timing.items() if v is not None},
            "steps": report["steps"], "planned_steps": report["planned_steps"],
            "stopped_early": report["stopped_early"], "tokens_per_sec": round(report["tokens_per_sec"]),
            "diagnosis": report["diagnosis"][0]["label"],
            "base_perplexity": round(report["comparison"]["base_perplexity"], 1),
            "tuned_perplexity": round(report["comparison"]["tuned_perplexity"], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    runs = []
    for i in range(args.runs):
        folder = tempfile.mkdtemp(prefix="main-job-")
        try:
            runs.append(one_run(os.path.join(folder, "out")))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps(runs[-1]), flush=True)
    met = {k: all((r[k] <= v) if k != "training_share" else (r[k] >= v) for r in runs) for k, v in TARGETS.items()}
    met["healthy"] = all(r["diagnosis"] == "healthy" for r in runs)
    result = {"cpu": cpu, "bfloat16": "avx512_bf16" in flags or "amx_bf16" in flags, "targets": TARGETS,
              "met": met, "runs": runs}
    with open(os.path.join(ROOT, "bench", "main_job.json"), "w") as f:
        json.dump(result, f, indent=2)
    rows = "\n".join(
        f"| {i + 1} | {r['wall_seconds']} | {r['training_seconds']} ({r['training_share']:.0%}) | "
        f"{r['first_step_seconds']} | {r['startup_seconds']} | {r['evaluation_seconds']} | "
        f"{r['generation_seconds']} | {r['review_seconds']} | {r['export_seconds'] + r['report_seconds']:.1f} | "
        f"{r['steps']}/{r['planned_steps']} | {r['base_perplexity']} -> {r['tuned_perplexity']} | {r['diagnosis']} |"
        for i, r in enumerate(runs))
    with open(os.path.join(ROOT, "bench", "main_job.md"), "w") as f:
        f.write(f"""# The main job against its targets

`bench/bench_main_job.py` on {cpu} ({'bfloat16' if result['bfloat16'] else 'float32'}), 2 cores.
Targets: wall <= {TARGETS['wall_seconds']:.0f} s, training >= {TARGETS['training_share']:.0%} of it,
first step <= {TARGETS['first_step_seconds']:.0f} s after launch, a healthy diagnosis. Met: {met}.

| run | wall s | training s | first step s | start-up s | evaluation s | generation s | review s | export + report s | steps | perplexity | diagnosis |
|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}
""")
    print(json.dumps(met))
    sys.exit(0 if all(met.values()) else 1)


if __name__ == "__main__":
    main()
