"""The prediction server of the serving container: Vertex AI's custom-container contract
over a run's OUTPUT/serving/ SavedModel, with TensorFlow, `tokenizers` and aiohttp only
(no transformers, no tunewell: the image stays small and starts fast).

    python -m deploy.serve --model_dir=runs/local/serving [--port=8080]

Vertex AI sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and AIP_STORAGE_URI (the
model's gs:// folder, copied to local disk at start-up: TensorFlow reads gs:// itself);
the flags are for running it anywhere else.

    POST /predict {"instances": [{"prompt": "The river", "max_new_tokens": 40, "temperature": 0.8,
                                  "top_p": 0.9, "top_k": 0, "seed": 1}, ...],
                   "parameters": {...defaults for every instance...}}
    ->   {"predictions": [{"completion": "...", "token_ids": [...], "log_probs": [...],
                           "finish_reason": "eos" | "length"}, ...]}

Only "prompt" is required (or "token_ids" instead of it); the rest default to
max_new_tokens 64, temperature 0 (greedy), top_k 0, top_p 1, seed 0. A bad request (not
JSON, no instances, a missing or mistyped field, a prompt plus max_new_tokens past the
model's positions, more than --max_instances instances) gets 400 and a message naming the
instance and the field; nothing a client sends gives a 500 or a hang.

Batching: requests that arrive within --batch_window_ms of each other are generated in one
call of the SavedModel, up to --max_batch_rows rows; every control is per row, so requests
with different settings share a batch, and a row's output never depends on its batch mates.
"""

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import tempfile
import time

DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
FIELDS = {"prompt": str, "token_ids": list, **{k: type(v) for k, v in DEFAULTS.items()}}

log = logging.getLogger("tunewell.serve")


class BadRequest(Exception):
    """A client error: answered with 400 and this message."""


def local_copy(uri: str) -> str:
    """A gs:// model folder copied to local disk (TensorFlow's own gs:// support); a local path as is."""
    import tensorflow as tf

    if not uri.startswith("gs://"):
        return uri
    target = tempfile.mkdtemp(prefix="tunewell-serving-")
    for folder, _, files in tf.io.gfile.walk(uri):
        relative = folder[len(uri.rstrip("/")):].lstrip("/")
        os.makedirs(os.path.join(target, relative), exist_ok=True)
        for name in files:
            tf.io.gfile.copy(f"{folder.rstrip('/')}/{name}", os.path.join(target, relative, name), overwrite=True)
    return target


class Model:
    """The SavedModel's `generate`, its tokenizer and limits (serving.json)."""

    def __init__(self, model_dir: str):
        import tensorflow as tf
        from tokenizers import Tokenizer

        folder = local_copy(model_dir)
        if not os.path.exists(os.path.join(folder, "COMPLETE.json")):
            raise SystemExit(f"{model_dir}: no COMPLETE.json, so not a finished OUTPUT/serving/ folder (a run still "
                             "exporting, or the wrong path). Point at a run's serving/ folder.")
        with open(os.path.join(folder, "serving.json")) as f:
            self.info = json.load(f)
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer", "tokenizer.json"))
        self.generate = tf.saved_model.load(folder).signatures[self.info["signature"]]
        self.n_positions, self.eos, self.pad = self.info["n_positions"], self.info["eos_token_id"], self.info["pad_token_id"]
        self.tf = tf
        if folder != model_dir:
            shutil.rmtree(folder, ignore_errors=True)  # loaded: the copy is no longer needed

    def rows(self, body, max_instances: int) -> list[dict]:
        """The request's instances as rows (token ids and controls), or BadRequest."""
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            raise BadRequest('the body must be a JSON object with "instances": a non-empty list, e.g. '
                             '{"instances": [{"prompt": "The river"}]}')
        if len(body["instances"]) > max_instances:
            raise BadRequest(f"{len(body['instances'])} instances; at most {max_instances} per request")
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise BadRequest('"parameters" must be a JSON object')
        return [self.row(i, {**parameters, **instance} if isinstance(instance, dict) else instance)
                for i, instance in enumerate(body["instances"])]

    def row(self, i: int, instance) -> dict:
        where = f"instances[{i}]"
        if not isinstance(instance, dict):
            raise BadRequest(f'{where} must be an object such as {{"prompt": "The river"}}')
        unknown = sorted(set(instance) - set(FIELDS))
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        for name, value in instance.items():
            wanted = FIELDS[name]
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if wanted is float else (
                isinstance(value, int) and not isinstance(value, bool)) if wanted is int else isinstance(value, wanted)
            if not ok:
                raise BadRequest(f"{where}.{name}: {json.dumps(value)[:40]} is not a{'n' if wanted is int else ''} "
                                 f"{ {str: 'string', list: 'list of token ids', int: 'integer', float: 'number'}[wanted]}")
        if ("prompt" in instance) == ("token_ids" in instance):
            raise BadRequest(f'{where}: give "prompt" (text) or "token_ids", one of the two')
        if "token_ids" in instance:
            ids = instance["token_ids"]
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.info["vocab_size"] for t in ids):
                raise BadRequest(f"{where}.token_ids: integers in [0, {self.info['vocab_size']}) only")
        else:
            ids = self.tokenizer.encode(instance["prompt"], add_special_tokens=False).ids
        controls = {**DEFAULTS, **{k: v for k, v in instance.items() if k in DEFAULTS}}
        new = controls["max_new_tokens"]
        if new < 1:
            raise BadRequest(f"{where}.max_new_tokens: at least 1")
        if len(ids) + new > self.n_positions:
            raise BadRequest(f"{where}: the prompt's {len(ids)} tokens plus max_new_tokens {new} exceed the model's "
                             f"{self.n_positions} positions; shorten the prompt or ask for at most "
                             f"{max(0, self.n_positions - len(ids))} new tokens")
        if not all(math.isfinite(controls[k]) for k in ("temperature", "top_p")):
            raise BadRequest(f"{where}: temperature and top_p must be finite numbers")
        if controls["temperature"] < 0 or controls["top_k"] < 0 or not 0 < controls["top_p"] <= 1:
            raise BadRequest(f"{where}: temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), 0 < top_p <= 1")
        if not -2**31 <= controls["seed"] < 2**31:
            raise BadRequest(f"{where}.seed: a 32-bit integer")
        return {"ids": ids, **controls}

    def run(self, rows: list[dict]) -> list[dict]:
        """One call of the SavedModel for these rows (right-padded)."""
        tf = self.tf
        width = max(1, max(len(r["ids"]) for r in rows))
        out = self.generate(
            input_ids=tf.constant([r["ids"] + [self.pad] * (width - len(r["ids"])) for r in rows], tf.int32),
            lengths=tf.constant([len(r["ids"]) for r in rows], tf.int32),
            **{k: tf.constant([r[k] for r in rows], tf.float32 if k in ("temperature", "top_p") else tf.int32)
               for k in DEFAULTS})
        predictions = []
        for ids, length, scores in zip(out["token_ids"].numpy(), out["lengths"].numpy(), out["log_probs"].numpy()):
            ids, scores = ids[:length].tolist(), scores[:length].tolist()
            ended = bool(ids) and ids[-1] == self.eos
            text_ids = ids[:-1] if ended else ids
            predictions.append({"completion": self.tokenizer.decode(text_ids, skip_special_tokens=True),
                                "token_ids": ids, "log_probs": scores, "finish_reason": "eos" if ended else "length"})
        return predictions


class Batcher:
    """Requests within batch_window_ms of each other share one generate call (up to
    max_batch_rows rows), run in a worker thread so the event loop keeps answering."""

    def __init__(self, model: Model, max_batch_rows: int, batch_window_ms: float):
        self.model, self.max_rows, self.window = model, max_batch_rows, batch_window_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = None

    async def submit(self, rows: list[dict]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def loop(self):
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.window
            while sum(len(r) for r, _ in batch) < self.max_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            rows = [row for request, _ in batch for row in request]
            try:
                results = await asyncio.to_thread(self.model.run, rows)
            except Exception as e:  # a server fault: every waiting request hears of it
                log.exception("generation failed")
                for _, future in batch:
                    future.set_exception(e)
                continue
            start = 0
            for request, future in batch:
                future.set_result(results[start: start + len(request)])
                start += len(request)


def make_app(model: Model, health_route: str = "/health", predict_route: str = "/predict",
             max_instances: int = 32, max_batch_rows: int = 32, batch_window_ms: float = 5.0):
    from aiohttp import web

    batcher = Batcher(model, max_batch_rows, batch_window_ms)

    async def health(request):
        return web.json_response({"status": "ok", "model": model.info})

    async def predict(request):
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as e:
            return web.json_response({"error": f"the body is not JSON ({e})"}, status=400)
        try:
            rows = model.rows(body, max_instances)
        except BadRequest as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"predictions": await batcher.submit(rows)})

    async def start_batcher(app):
        batcher.task = asyncio.get_running_loop().create_task(batcher.loop())

    async def stop_batcher(app):
        batcher.task.cancel()

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get(health_route, health)
    app.router.add_post(predict_route, predict)
    app.on_startup.append(start_batcher)
    app.on_cleanup.append(stop_batcher)
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default=os.environ.get("AIP_STORAGE_URI", ""),
                        help="a run's serving/ folder, local or gs:// (default: $AIP_STORAGE_URI)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIP_HTTP_PORT", "8080")))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--max_instances", type=int, default=32, help="instances per request, at most")
    parser.add_argument("--max_batch_rows", type=int, default=32, help="rows per generate call, at most")
    parser.add_argument("--batch_window_ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for others")
    args = parser.parse_args(argv)
    if not args.model_dir:
        parser.error("--model_dir (or AIP_STORAGE_URI) is required: a run's serving/ folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from aiohttp import web

    started = time.monotonic()
    model = Model(args.model_dir)
    log.info("loaded %s in %.1f s", args.model_dir, time.monotonic() - started)
    app = make_app(model, os.environ.get("AIP_HEALTH_ROUTE", "/health"), os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
                   args.max_instances, args.max_batch_rows, args.batch_window_ms)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
