"""Multi-worker training with 2 real processes on 127.0.0.1 (MultiWorkerMirroredStrategy).

- the loss, gradient norm and updated weights equal one device's on a batch whose
  workers hold different amounts of padding;
- both TF_CONFIG layouts train the CLI's run to the same result: Vertex AI's
  (chief in pool 0, worker in pool 1, extra keys) and a worker-only one;
- only the chief writes: the other worker runs with the output directory mounted
  READ-ONLY (its own mount namespace), so any write it tried would fail the run;
- a SIGTERM to one worker stops both at the same step with a checkpoint; a worker
  killed with SIGKILL (the non-chief, then the chief) ends the other with a clear message;
  relaunching resumes and ends as the uninterrupted run did;
- on prepared shards, two workers train on the global batches one device sees: the same
  loss at every step, across an epoch boundary, from a resumed step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT, cli_args, small_config

# ~216 training documents -> 27 steps/epoch at 8 x 32 tokens, capped at 30 steps;
# evaluations (and checkpoints) every 10 steps, every step logged.
OVERRIDES = {"train.epochs": 2, "train.max_steps": 30, "train.eval_every_steps": 10, "train.log_every_steps": 1,
             "train.early_stopping_patience": 0, "preflight": "off", "runtime.strategy": "multi_worker"}
TIMEOUT = 300


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(layout: str, ports: list[int], index: int) -> str:
    addresses = [f"127.0.0.1:{p}" for p in ports]
    if layout == "vertex":  # what Vertex AI sets: pool 0 is "chief", pool 1 "worker", plus extra keys
        task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
        return json.dumps({"cluster": {"chief": addresses[:1], "worker": addresses[1:]}, "task": task,
                           "environment": "cloud", "job": {"worker_pool_specs": [{"replica_count": 1}] * 2}})
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


class Pair:
    """Two CLI processes of one job; the second sees the output directory read-only."""

    def __init__(self, config, folder, layout="workers", faults=("", "")):
        os.makedirs(config.output_dir, exist_ok=True)
        ports = free_ports(2)
        self.logs = [os.path.join(folder, f"{layout}-{i}-{time.monotonic_ns()}.log") for i in range(2)]
        self.worker_tmp = os.path.join(folder, "worker-tmp")
        os.makedirs(self.worker_tmp, exist_ok=True)
        self.procs = []
        for i in range(2):
            command = [sys.executable, "-m", "trainer.task", *cli_args(config, **OVERRIDES)]
            if i == 1:
                command = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                           config.output_dir, *command]
            env = {**os.environ, "TF_CONFIG": tf_config(layout, ports, i), "TUNEWELL_FAULT": faults[i],
                   "TMPDIR": self.worker_tmp if i else os.environ.get("TMPDIR", "/tmp")}
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                   env=env))

    def wait(self) -> list[int]:
        deadline = time.monotonic() + TIMEOUT
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()

    def output(self, i: int) -> str:
        return open(self.logs[i]).read()


def worker_folders(pair) -> list[str]:
    """The non-chief's local checkpoint folders left in its TMPDIR (TensorFlow's own
    autograph files may stay there after a SIGKILL)."""
    return [n for n in os.listdir(pair.worker_tmp) if n.startswith("tunewell-")]


def train_points(config) -> list[int]:
    path = os.path.join(config.output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    points = []
    for line in open(path):
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if point["split"] == "train":
            points.append(point["step"])
    return points


def report_of(config):
    return json.load(open(os.path.join(config.output_dir, "report.json")))


def assert_same_result(resumed, straight):
    assert resumed["steps"] == straight["steps"] == 30
    assert [p["step"] for p in resumed["history"]["train"]] == list(range(1, 31))
    for split in ("train", "validation"):
        assert [p["loss"] for p in resumed["history"][split]] == pytest.approx(
            [p["loss"] for p in straight["history"][split]], rel=1e-4), split
    assert resumed["best_val_loss"] == pytest.approx(straight["best_val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file, tiny_model_dir):
    """The uninterrupted run, in Vertex AI's layout."""
    folder = tmp_path_factory.mktemp("multiworker")
    config = small_config(folder / "out", corpus_file, tiny_model_dir, **OVERRIDES)
    pair = Pair(config, str(folder), layout="vertex")
    codes = pair.wait()
    assert codes == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
    return config, pair


def test_vertex_layout_trains_and_only_the_chief_writes(straight):
    config, pair = straight
    chief, worker = pair.output(0), pair.output(1)
    assert "Strategy: multi_worker (MultiWorkerMirroredStrategy), 2 replica(s) on 2 workers; this is chief:0 " \
           "(chief)." in chief
    assert "this is worker:0." in worker
    assert "2 replica(s) x 4 rows = global batch 8 rows x 32 tokens = 256 tokens/step." in chief
    assert "worker:0: trained 30 steps; the chief" in worker
    report = report_of(config)
    assert report["distribution"] == {"strategy": "MultiWorkerMirroredStrategy", "replicas": 2, "workers": 2,
                                      "precision": "float32"}
    assert report["best_val_loss"] < report["initial_val_loss"]
    assert os.path.exists(os.path.join(config.output_dir, "export", "tf_model.h5"))
    assert worker_folders(pair) == []  # the worker's checkpoint copies are gone


def test_sigterm_on_one_worker_stops_both_and_sigkill_plus_relaunch_resumes(tmp_path, corpus_file,
                                                                            tiny_model_dir, straight):
    """In the worker-only layout (worker 0 is the chief), against the Vertex-layout run."""
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **OVERRIDES)

    # 1. SIGTERM (a preemption notice) to the non-chief worker alone, mid-run.
    pair = Pair(config, str(tmp_path))
    deadline = time.monotonic() + TIMEOUT
    while not any(step >= 12 for step in train_points(config)) and time.monotonic() < deadline:
        assert pair.procs[0].poll() is None, pair.output(0)[-3000:]
        time.sleep(0.05)
    pair.procs[1].send_signal(signal.SIGTERM)
    codes = pair.wait()
    assert codes == [128 + signal.SIGTERM] * 2, pair.output(0)[-3000:] + pair.output(1)[-3000:]
    stopped = [int(pair.output(i).split("Interrupted at step ")[1].split(";")[0]) for i in range(2)]
    assert stopped[0] == stopped[1] >= 12  # agreed: the same step on both
    checkpoints = os.path.join(config.output_dir, "checkpoints")
    assert f"ckpt-{stopped[0]}.index" in os.listdir(checkpoints)

    # 2. Relaunch; the non-chief worker is killed with SIGKILL at step 25: the chief
    #    does not hang in a collective, it says what happened and exits.
    pair = Pair(config, str(tmp_path), faults=("", "train_step@25"))
    codes = pair.wait()
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 1, pair.output(0)[-3000:]
    assert "another worker of this 2-worker job stopped" in pair.output(0)
    assert "Relaunch the whole job with the same command" in pair.output(0)

    # 3. Relaunch (from step 20); now the CHIEF, the one that writes, is killed at step 27:
    #    the other worker is told and exits too.
    pair = Pair(config, str(tmp_path), faults=("train_step@27", ""))
    codes = pair.wait()
    assert codes[0] == -signal.SIGKILL and codes[1] == 1, pair.output(1)[-3000:]
    assert "another worker of this 2-worker job stopped" in pair.output(1)

    # 4. Relaunch: resumes from the last checkpoint and ends as the uninterrupted run.
    pair = Pair(config, str(tmp_path))
    codes = pair.wait()
    assert codes == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
    assert "Resuming from" in pair.output(0) and "Resuming from" in pair.output(1)
    assert "this is worker:0 (chief)." in pair.output(0) and "worker:1: trained 30 steps" in pair.output(1)
    assert worker_folders(pair) == []
    assert_same_result(report_of(config), report_of(straight[0]))


# ----------------------------------------------------------------------------- one update, two workers

ONE_STEP = textwrap.dedent("""
    import json, sys
    import trainer
    from configs import default
    from trainer import data, model as model_lib
    from trainer.training import distribution, optimization, steps
    runtime = default.get_config().runtime
    runtime.strategy = sys.argv[2]
    strategy = distribution.get_strategy(runtime, log=lambda m: None)
    import numpy as np, tensorflow as tf
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 300, [8, 16]).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:4, 5:] = 0  # the first half of the batch (worker 0's rows) is mostly padding
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    plan = optimization.TrainingPlan(1, 1, 10, 1, 1e-2, 1, 1, 1, {})
    with strategy.scope():
        model, _ = model_lib.load_model(sys.argv[1], log=lambda m: None)
        optimizer = optimization.make_optimizer(plan, default.get_config().optim)
    step = steps.make_train_step(model, optimizer, strategy, 1, 1.0)
    # The trainer's own input path, on blocks whose one-epoch order is the batch above.
    order = data.train_order(8, 8, 1, 1, 0, seed=0)
    inverse = np.argsort(order)
    blocks = data.Blocks(ids[inverse], mask[inverse], labels[inverse], documents=8, tokens=int(mask.sum()))
    distributed = data.distributed_train_data(strategy, blocks, 8, 1, 1, 0, seed=0)
    first = next(iter(distributed))
    local_rows = np.concatenate([t.numpy() for t in strategy.experimental_local_results(first["input_ids"])])
    result = {k: float(v) for k, v in step(first).items()}
    result["weights"] = [float(np.sum(np.abs(w.numpy()))) for w in model.trainable_weights]
    result["replicas"] = strategy.num_replicas_in_sync
    result["local_rows"] = local_rows.tolist()
    print("RESULT" + json.dumps(result))
""")


def test_two_workers_match_one_device_with_uneven_padding(tmp_path, tiny_model_dir):
    one = subprocess.run([sys.executable, "-c", ONE_STEP, tiny_model_dir, "one_device"], cwd=ROOT,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    ports = free_ports(2)
    procs = [subprocess.Popen([sys.executable, "-c", ONE_STEP, tiny_model_dir, "multi_worker"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TF_CONFIG": tf_config("workers", ports, i)}) for i in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    reference = json.loads(one.stdout.split("RESULT", 1)[1])
    workers = [json.loads(out.split("RESULT", 1)[1]) for out, _ in outputs]
    assert reference["count"] == 4 * 4 + 4 * 15  # 4 targets per padded row, 15 per full row
    for i, result in enumerate(workers):
        assert result["replicas"] == 2
        assert result["local_rows"] == reference["local_rows"][4 * i: 4 * i + 4]  # worker i: its slice
        assert result["count"] == reference["count"]
        for key in ("loss_sum", "grad_norm", "tokens"):
            assert result[key] == pytest.approx(reference[key], rel=1e-5), key
        assert result["weights"] == pytest.approx(reference["weights"], rel=1e-5)


# ----------------------------------------------------------------------------- shards, two workers

SHARD_STEPS = textwrap.dedent("""
    import json, sys
    import trainer
    from configs import default
    from trainer import data, model as model_lib
    from trainer.training import distribution, optimization, steps
    model_dir, folder, rows = sys.argv[1], sys.argv[2], int(sys.argv[4])
    runtime = default.get_config().runtime
    runtime.strategy = sys.argv[3]
    strategy = distribution.get_strategy(runtime, log=lambda m: None)
    import os, tensorflow as tf
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
    shards = data.Shards(paths, rows, 16)
    per_epoch = rows // 8  # global batch 8
    start, total = per_epoch - 2, per_epoch + 3  # resumed 2 steps before the first epoch ends
    plan = optimization.TrainingPlan(per_epoch, 2, 2 * per_epoch, 1, 1e-2, 1, 1, 1, {})
    with strategy.scope():
        model, _ = model_lib.load_model(model_dir, log=lambda m: None)
        optimizer = optimization.make_optimizer(plan, default.get_config().optim)
    step = steps.make_train_step(model, optimizer, strategy, 1, 1.0)
    batches = iter(data.distributed_train_data(strategy, shards, 8, per_epoch, total, start, seed=5))
    losses = []
    for _ in range(total - start):
        out = step(next(batches))
        losses.append(float(out["loss_sum"]) / float(out["count"]))
    print("RESULT" + json.dumps({"losses": losses, "replicas": strategy.num_replicas_in_sync}))
""")


def test_two_workers_on_shards_train_on_the_global_batches_of_one_device(tmp_path, tiny_model_dir):
    """100 rows in 16 shards: 12 steps an epoch of 8 rows; steps 10 .. 14, through the epoch's end."""
    import numpy as np

    from tests.conftest import write_shards
    from trainer.data import blocks

    ids = np.random.default_rng(0).integers(1, 300, [100, 16]).astype(np.int32)
    write_shards(blocks.Blocks(ids, np.ones_like(ids), ids, documents=100, tokens=1600), str(tmp_path), "train", 16)
    args = [sys.executable, "-c", SHARD_STEPS, tiny_model_dir, str(tmp_path)]
    one = subprocess.run([*args, "one_device", "100"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    ports = free_ports(2)
    procs = [subprocess.Popen([*args, "multi_worker", "100"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TF_CONFIG": tf_config("workers", ports, i)}) for i in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    reference = json.loads(one.stdout.split("RESULT", 1)[1])
    assert len(reference["losses"]) == 5
    for out, _ in outputs:
        result = json.loads(out.split("RESULT", 1)[1])
        assert result["replicas"] == 2
        assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5)
