"""The serving container's smoke test, run INSIDE the image with --network=none (make
serve-smoke): starts deploy.serve on the loopback as Vertex AI would (AIP_* variables),
sends real HTTP requests, checks the answers, and prints a latency table.

    python -m deploy.serve_smoke --model_dir=/model [--port=8080] [--repeats=5]

Checks: the health route answers 200; a single greedy prediction and a batch of 8 answer
200 with one prediction per instance; bad requests (not JSON, no instances, a missing or
mistyped field, too many tokens) answer 400 with a message, each within the timeout (never
a 500, never a hang). The last line is RESULT + JSON (the single greedy completion and the
latencies) for tests/test_serve_container.py. Standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 120
BAD_REQUESTS = [
    ("not JSON", b"{oops", "not JSON"),
    ("no instances", {"prompt": "The river"}, '"instances"'),
    ("missing prompt", {"instances": [{"max_new_tokens": 5}]}, '"prompt"'),
    ("wrong type", {"instances": [{"prompt": "The river", "max_new_tokens": "five"}]}, "not an integer"),
    ("too many tokens", {"instances": [{"prompt": "word " * 400, "max_new_tokens": 64}]}, "positions"),
]


def call(url: str, body=None):
    """(status, JSON) of a GET (body None) or POST."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per batch size")
    args = parser.parse_args(argv)
    env = {**os.environ, "AIP_HTTP_PORT": str(args.port), "AIP_HEALTH_ROUTE": "/health",
           "AIP_PREDICT_ROUTE": "/predict", "AIP_STORAGE_URI": args.model_dir}
    server = subprocess.Popen([sys.executable, "-m", "deploy.serve"], env=env)
    base = f"http://127.0.0.1:{args.port}"
    failures, single, latencies = [], {}, {}
    try:
        started = time.monotonic()
        while True:
            try:
                status, health = call(base + "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() - started > 300:
                print("FAIL: the server did not come up", flush=True)
                return 1
            time.sleep(0.5)
        print(f"health: 200 after {time.monotonic() - started:.1f} s", flush=True)

        status, single = call(base + "/predict", {"instances": [{"prompt": "The river", "max_new_tokens": 20}]})
        if status != 200 or len(single.get("predictions", [])) != 1:
            failures.append(f"single prediction: {status} {single}")
        prompts = ["The river", "I would like to", "A regular expression is", "", "Once upon a time",
                   "The function returns", "dog:", "x"]
        status, batch = call(base + "/predict", {"instances": [{"prompt": p, "seed": i, "temperature": 0.8}
                                                               for i, p in enumerate(prompts)],
                                                 "parameters": {"max_new_tokens": 16}})
        if status != 200 or len(batch.get("predictions", [])) != 8:
            failures.append(f"batch of 8: {status} {batch}")
        for name, body, words in BAD_REQUESTS:
            status, answer = call(base + "/predict", body)
            if status != 400 or words not in answer.get("error", ""):
                failures.append(f"bad request ({name}): {status} {answer}")
            else:
                print(f"bad request ({name}): 400 {answer['error'][:90]}", flush=True)

        latencies = {}
        for rows in (1, 8):
            body = {"instances": [{"prompt": prompts[i % 8], "max_new_tokens": 32} for i in range(rows)]}
            call(base + "/predict", body)  # warm: the first call of a batch shape
            seconds = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                status, _ = call(base + "/predict", body)
                seconds.append(time.perf_counter() - t)
                if status != 200:
                    failures.append(f"timed batch of {rows}: {status}")
            latencies[rows] = {"median_ms": 1000 * statistics.median(seconds), "max_ms": 1000 * max(seconds),
                               "tokens_per_s": rows * 32 / statistics.median(seconds)}
        print("| batch | new tokens each | median latency | max latency | new tokens/s |")
        print("| --- | --- | --- | --- | --- |")
        for rows, t in latencies.items():
            print(f"| {rows} | 32 | {t['median_ms']:.0f} ms | {t['max_ms']:.0f} ms | {t['tokens_per_s']:.0f} |")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for failure in failures:
        print("FAIL:", failure, flush=True)
    print("RESULT" + json.dumps({"single": single.get("predictions", [{}])[0] if isinstance(single, dict) else None,
                                 "latencies": latencies, "failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
