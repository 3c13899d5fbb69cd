"""OUTPUT/serving/: a SavedModel with a `generate` signature that TensorFlow alone loads,
whose greedy output is trainer.generate's token for token (issue 26)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import ROOT, quiet
from trainer import filesystem
from trainer import model as model_lib

PROMPTS = ["The river", "Return the absolute value of a number.", "", "x", "dog: a domesticated mammal."]


@pytest.fixture(scope="module")
def exported(main_job):
    """The main job's serving/ SavedModel, and its export/ loaded as trainer.generate loads it."""
    _, report = main_job
    info = json.load(open(os.path.join(report["serving_dir"], "serving.json")))
    assert info["padding"] == "right" and info["n_positions"] == 256
    model, _ = model_lib.load_model(report["export_dir"], log=quiet)
    return report["serving_dir"], model, model_lib.load_tokenizer(report["export_dir"], log=quiet)


@pytest.fixture(scope="module")
def serving_dir(exported):
    return exported[0]


def run_signature(folder, inputs):
    import tensorflow as tf

    generate = tf.saved_model.load(folder).signatures["generate"]
    out = generate(**{k: tf.constant(v, tf.float32 if k in ("temperature", "top_p") else tf.int32)
                      for k, v in inputs.items()})
    return {k: v.numpy().tolist() for k, v in out.items()}


def request(tokenizer, prompts, max_new_tokens=20, temperature=0.0, top_k=0, top_p=1.0, seeds=None):
    """The signature's inputs for prompts: right-padded ids and lengths, per-row controls."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(1, max(map(len, ids)))
    rows = len(prompts)
    return {"input_ids": [i + [7] * (width - len(i)) for i in ids], "lengths": [len(i) for i in ids],
            "max_new_tokens": [max_new_tokens] * rows if np.isscalar(max_new_tokens) else max_new_tokens,
            "temperature": [temperature] * rows, "top_k": [top_k] * rows, "top_p": [top_p] * rows,
            "seed": seeds or [0] * rows}


def test_greedy_serving_equals_trainer_generate_token_for_token(exported):
    """(The server below runs the same SavedModel in a process that cannot import transformers.)"""
    serving_dir, model, tokenizer = exported
    out = run_signature(serving_dir, request(tokenizer, PROMPTS, max_new_tokens=24))
    for prompt, ids, length, log_probs in zip(PROMPTS, out["token_ids"], out["lengths"], out["log_probs"]):
        expected = model_lib.generate(model, tokenizer, prompt, 24)  # greedy, as trainer.generate runs it
        assert tokenizer.decode(ids[:length], skip_special_tokens=True) == expected, prompt
        assert (length == 24 or ids[length - 1] == tokenizer.eos_token_id) and all(p <= 0 for p in log_probs[:length])
    # The log-probabilities are the model's own, of the tokens it wrote.
    ids = tokenizer("The river", add_special_tokens=False)["input_ids"]
    full = np.array([ids + out["token_ids"][0][:3]])
    logits = model(input_ids=full).logits.numpy()[0]
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for j in range(3):
        assert out["log_probs"][0][j] == pytest.approx(log_softmax[len(ids) - 1 + j, full[0, len(ids) + j]], abs=1e-3)


def test_rows_keep_their_own_budget_seed_and_sampling(exported):
    import tensorflow as tf

    serving_dir, _, tokenizer = exported
    generate = tf.saved_model.load(serving_dir).signatures["generate"]

    def run(inputs):
        out = generate(**{k: tf.constant(v, tf.float32 if k in ("temperature", "top_p") else tf.int32)
                          for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    sampled = request(tokenizer, PROMPTS[:3], max_new_tokens=[5, 12, 0], temperature=0.8, top_p=0.9, seeds=[1, 2, 3])
    out = run(sampled)
    assert out["lengths"].tolist() == [5, 12, 0] and out["token_ids"].shape == (3, 12)
    assert (out["token_ids"][0, 5:] == tokenizer.pad_token_id).all() and (out["log_probs"][0, 5:] == 0).all()
    # A row's draws depend on its seed, prompt and settings only, not on the rows beside it.
    alone = run(request(tokenizer, PROMPTS[1:2], max_new_tokens=12, temperature=0.8, top_p=0.9, seeds=[2]))
    np.testing.assert_array_equal(alone["token_ids"][0], out["token_ids"][1])
    other_seed = run(request(tokenizer, PROMPTS[1:2], max_new_tokens=12, temperature=0.8, top_p=0.9, seeds=[9]))
    assert other_seed["token_ids"][0].tolist() != alone["token_ids"][0].tolist()
    # top_k=1 is greedy, whatever the temperature.
    top1 = run(request(tokenizer, PROMPTS[:2], max_new_tokens=8, temperature=1.5, top_k=1, seeds=[4, 5]))
    greedy = run(request(tokenizer, PROMPTS[:2], max_new_tokens=8))
    np.testing.assert_array_equal(top1["token_ids"], greedy["token_ids"])
    # Never past the model's 256 positions: a 250-token prompt gets 6 new tokens of 20 asked.
    long = run({**request(tokenizer, ["word " * 250], max_new_tokens=20)})
    assert long["lengths"].tolist() == [256 - len(tokenizer("word " * 250, add_special_tokens=False)["input_ids"])]


def test_saved_model_cli_lists_the_signature_and_runs_it(exported):
    serving_dir, model, tokenizer = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", serving_dir, "--tag_set", "serve", "--signature_def", "generate"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("input_ids", "lengths", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                 "token_ids", "log_probs"):
        assert f"['{name}']" in shown.stdout, name
    ids = tokenizer("The river", add_special_tokens=False)["input_ids"]
    # Python literals only (saved_model_cli evaluates --input_exprs with ast.literal_eval).
    exprs = (f"input_ids=[{ids}];lengths=[{len(ids)}];max_new_tokens=[6];temperature=[0.0];top_k=[0];top_p=[1.0];"
             "seed=[0]")
    ran = subprocess.run([cli, "run", "--dir", serving_dir, "--tag_set", "serve", "--signature_def", "generate",
                          "--input_exprs", exprs], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    printed = ran.stdout.split("Result for output key token_ids:", 1)[1].split("Result for", 1)[0]
    new = [int(t) for t in printed.replace("[", " ").replace("]", " ").split()]
    assert tokenizer.decode(new, skip_special_tokens=True) == model_lib.generate(model, tokenizer, "The river", 6)


def test_the_folder_is_complete_and_carries_its_tokenizer(serving_dir):
    assert filesystem.is_complete(serving_dir)
    info = json.load(open(os.path.join(serving_dir, "serving.json")))
    assert info["signature"] == "generate" and os.path.exists(os.path.join(serving_dir, "tokenizer", "tokenizer.json"))


# ----------------------------------------------------------------------------- the server (deploy/serve.py)

SERVER = textwrap.dedent("""
    import sys
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("transformers", "trainer", "torch"):
                raise ImportError("not in the serving image: " + name)
    sys.meta_path.insert(0, Refuse())
    from deploy import serve
    serve.main(sys.argv[1:])
""")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=120):
    """(status, parsed JSON) of a POST; body is bytes or JSON-able."""
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(serving_dir):
    """The Vertex contract: port, routes and model folder from AIP_* variables."""
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/v1/health",
           "AIP_PREDICT_ROUTE": "/v1/predict", "AIP_STORAGE_URI": serving_dir}
    process = subprocess.Popen([sys.executable, "-c", SERVER, "--batch_window_ms=50"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/v1/health", timeout=5) as r:
                assert r.status == 200
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("the server did not come up: " + process.stdout.read()[-3000:])
            time.sleep(0.5)
    yield base
    process.terminate()
    process.wait(timeout=30)


def test_the_server_answers_single_and_batched_predictions_as_trainer_generate(server, exported):
    """In a process that cannot import transformers, tunewell or torch: what the serving image has."""
    from concurrent.futures import ThreadPoolExecutor

    _, model, tokenizer = exported
    status, out = post(server + "/v1/predict", {"instances": [{"prompt": "The river", "max_new_tokens": 12}]})
    assert status == 200, out
    (prediction,) = out["predictions"]
    assert prediction["completion"] == model_lib.generate(model, tokenizer, "The river", 12)
    assert len(prediction["token_ids"]) == len(prediction["log_probs"])
    assert (len(prediction["token_ids"]), prediction["finish_reason"]) == (12, "length") or \
        prediction["finish_reason"] == "eos"
    # One request of several instances, "parameters" as every instance's defaults.
    status, out = post(server + "/v1/predict", {"instances": [{"prompt": p} for p in PROMPTS],
                                                 "parameters": {"max_new_tokens": 8}})
    assert status == 200 and [p["completion"] for p in out["predictions"]] == [
        model_lib.generate(model, tokenizer, p, 8) for p in PROMPTS]
    # Concurrent requests with different settings share batches and keep their own answers.
    bodies = [{"instances": [{"prompt": p, "max_new_tokens": 6 + i, "temperature": 0.7 * (i % 2), "seed": i}]}
              for i, p in enumerate(PROMPTS * 2)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post(server + "/v1/predict", b), bodies))
    for body, (status, out) in zip(bodies, together):
        assert status == 200
        (alone,), (shared,) = post(server + "/v1/predict", body)[1]["predictions"], out["predictions"]
        assert alone["token_ids"] == shared["token_ids"]  # alone: the same tokens (log-probabilities
        assert alone["log_probs"] == pytest.approx(shared["log_probs"], abs=1e-4)  # up to float sums over padding)
        (prediction,) = out["predictions"]
        assert (len(prediction["token_ids"]) == body["instances"][0]["max_new_tokens"]
                or prediction["finish_reason"] == "eos" and prediction["token_ids"][-1] == tokenizer.eos_token_id)


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ({"prompt": "no instances"}, '"instances": a non-empty list'),
    ({"instances": []}, '"instances": a non-empty list'),
    ({"instances": ["The river"]}, "instances[0] must be an object"),
    ({"instances": [{"max_new_tokens": 5}]}, 'give "prompt" (text) or "token_ids"'),
    ({"instances": [{"prompt": 7}]}, "instances[0].prompt: 7 is not a string"),
    ({"instances": [{"prompt": "a", "max_new_tokens": "5"}]}, "max_new_tokens: \"5\" is not an integer"),
    ({"instances": [{"prompt": "a", "temperature": True}]}, "temperature: true is not a number"),
    ({"instances": [{"prompt": "a", "top_p": 0}]}, "0 < top_p <= 1"),
    ({"instances": [{"prompt": "a", "colour": "red"}]}, "unknown field(s) colour"),
    ({"instances": [{"token_ids": [1, 99999]}]}, "integers in [0, 8192)"),
    ({"instances": [{"prompt": "word " * 250, "max_new_tokens": 64}]}, "exceed the model's 256 positions"),
    ({"instances": [{"prompt": "a"}] * 33}, "at most 32 per request"),
])
def test_bad_requests_get_400_and_say_what_to_fix(server, body, message):
    status, out = post(server + "/v1/predict", body)
    assert status == 400 and message in out["error"], out
