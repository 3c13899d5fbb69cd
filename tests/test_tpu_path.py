"""What a TPU needs, checked where there is none (only the TPU hardware is missing here):
input read from files with static shapes, several steps per compiled call, no
float64 variables, bfloat16 compute; plus float16 with loss scaling and XLA, and
the choice of strategy from the environment."""

import json
import math
import subprocess
import sys
import textwrap
import time

import pytest

from configs import default
from tests.conftest import ROOT, small_config
from trainer.training import distribution
from trainer.errors import UserError

TPU_SHAPED = textwrap.dedent("""
    import json, sys
    import trainer
    from configs import default
    from trainer.training import checkpoints, distribution, optimization, steps
    from trainer import data, model as model_lib
    from trainer.data import shards as shards_lib
    from trainer.run import preparation as prepare
    model_dir, prepared_dir = sys.argv[1], sys.argv[2]
    runtime = default.get_config().runtime
    strategy = distribution.get_strategy(runtime, log=lambda m: None)
    import numpy as np, tensorflow as tf
    manifest = shards_lib.read_manifest(prepared_dir)
    shards = data.Shards(shards_lib.shard_paths(prepared_dir, manifest, "train"), manifest["splits"]["train"]["rows"], 32)
    plan = optimization.TrainingPlan(1, 10, 20, 2, 3e-3, 1, 1, 1, {})
    results = {}
    for name, precision, xla in (("bfloat16", "mixed_bfloat16", False), ("float16", "mixed_float16", False),
                                 ("float32", "float32", False), ("float32_xla", "float32", True)):
        runtime.precision = precision
        distribution.set_precision(runtime, strategy)  # layers built from here on compute in this precision
        with strategy.scope():
            tf.keras.utils.set_random_seed(0)
            model, _ = model_lib.load_model(model_dir, log=lambda m: None)
            optimizer = optimization.make_optimizer(plan, default.get_config().optim,
                                                    loss_scaling=distribution.uses_loss_scaling(precision))
            optimizer.build(model.trainable_variables)
        dataset = data.distributed_train_data(strategy, shards, 8, 10, 20, 0, seed=1)
        loop = steps.make_train_loop(model, optimizer, strategy, 1, 1.0, xla)
        iterator = iter(dataset)
        losses, grad_norms = [], []
        for _ in range(3):  # 3 calls of 4 steps each: one compiled function
            out, votes = loop(iterator, tf.constant(4), tf.constant(0.0))
            losses.append(float(out["loss_sum"]) / float(out["count"]))
            grad_norms.append(float(out["grad_norm"]) / 4)
        results[name] = {
            "spec": {k: v.shape.as_list() for k, v in dataset.element_spec.items()}, "losses": losses,
            "grad_norms": grad_norms,
            "steps": int(optimizer.iterations), "traces": loop.experimental_get_tracing_count(),
            "dtypes": sorted({v.dtype.name for v in model.variables + optimizer.variables}),
            "compute": model.transformer.h[0].attn.c_attn.compute_dtype, "votes": float(votes)}
    print("RESULT" + json.dumps(results))
""")


@pytest.fixture(scope="module")
def shaped(tmp_path_factory, corpus_file, tiny_model_dir):
    """One process trains 3 x 4 steps from prepared shards in each precision (and with XLA)."""
    from trainer.run import preparation as prepare

    folder = tmp_path_factory.mktemp("tpu") / "prepared"
    config = small_config(tmp_path_factory.mktemp("tpu-out"), corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(folder)})
    prepare.prepare_data(config, log=lambda m: None)
    done = subprocess.run([sys.executable, "-c", TPU_SHAPED, tiny_model_dir, str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT", 1)[1])


def test_tpu_shaped_training_in_bfloat16_from_files(shaped):
    out = shaped["bfloat16"]
    assert out["spec"] == {"input_ids": [8, 32], "attention_mask": [8, 32], "labels": [8, 32]}  # static
    assert out["steps"] == 12 and out["traces"] == 1  # 3 calls x 4 steps, traced once
    assert "float64" not in out["dtypes"] and "float32" in out["dtypes"]  # weights stay float32
    assert out["compute"] == "bfloat16"
    assert out["losses"][-1] < out["losses"][0] and out["votes"] == 0.0


def test_float16_with_loss_scaling_and_xla_train(shaped):
    fp16 = shaped["float16"]
    assert fp16["compute"] == "float16" and all(math.isfinite(x) for x in fp16["losses"])
    assert fp16["losses"][-1] < fp16["losses"][0]
    # The scaled loss's gradients are unscaled before clipping and reporting: the same size as float32's
    # (a missing unscale would report them 32,768 times larger).
    assert fp16["grad_norms"] == pytest.approx(shaped["float32"]["grad_norms"], rel=0.5)
    assert shaped["float32_xla"]["losses"] == pytest.approx(shaped["float32"]["losses"], rel=1e-3)
    assert shaped["float32"]["compute"] == "float32"


def test_strategy_is_chosen_from_the_environment():
    runtime = default.get_config().runtime
    two = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    assert distribution.choose(runtime, distribution.Cluster(), 0, environ={"TPU_NAME": "v5e"}) == "tpu"
    assert distribution.choose(runtime, distribution.cluster({"TF_CONFIG": two}), 0, environ={}) == "multi_worker"
    assert distribution.choose(runtime, distribution.Cluster(), 2, environ={}) == "mirrored"
    assert distribution.choose(runtime, distribution.Cluster(), 0, environ={}) == "default"
    runtime.cpu_devices = 2
    assert distribution.choose(runtime, distribution.Cluster(), 0, environ={}) == "mirrored"


def test_tf_config_layouts_name_the_chief():
    vertex = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}, "environment": "cloud",
              "job": {"worker_pool_specs": []}}
    chief = distribution.cluster({"TF_CONFIG": json.dumps({**vertex, "task": {"type": "chief", "index": 0}})})
    worker0 = distribution.cluster({"TF_CONFIG": json.dumps({**vertex, "task": {"type": "worker", "index": 0}})})
    assert (chief.workers, chief.is_chief, worker0.is_chief) == (3, True, False)
    plain = {"cluster": {"worker": ["w:1", "w:2"]}}
    first = distribution.cluster({"TF_CONFIG": json.dumps({**plain, "task": {"type": "worker", "index": 0}})})
    second = distribution.cluster({"TF_CONFIG": json.dumps({**plain, "task": {"type": "worker", "index": 1}})})
    assert (first.is_chief, second.is_chief, second.name) == (True, False, "worker:1")
    assert distribution.cluster({}) == distribution.Cluster()
    with pytest.raises(UserError, match="not valid JSON"):
        distribution.cluster({"TF_CONFIG": "{oops"})
    with pytest.raises(UserError, match="chief or worker"):
        distribution.cluster({"TF_CONFIG": json.dumps({**plain, "task": {"type": "ps", "index": 0}})})


def test_tpu_strategy_without_a_tpu_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    runtime = default.get_config().runtime
    runtime.strategy = "tpu"
    started = time.monotonic()
    with pytest.raises(UserError, match="no TPU found"):
        distribution.get_strategy(runtime, log=lambda m: None)
    assert time.monotonic() - started < 30  # no wait on a cloud metadata server


def test_a_tpu_vm_resolves_its_own_chips_as_local(monkeypatch):
    runtime = default.get_config().runtime
    on_tpu_vm = {"/dev/vfio/0"}
    monkeypatch.setattr(distribution.os.path, "exists", lambda path: path in on_tpu_vm)
    assert distribution.tpu_address(runtime, environ={}) == "local"  # a Vertex AI TPU job: no TPU_NAME
    assert distribution.tpu_address(runtime, environ={"TPU_NAME": "node-1"}) is None  # the resolver reads it
    runtime.tpu = "grpc://10.0.0.2:8470"
    assert distribution.tpu_address(runtime, environ={}) == "grpc://10.0.0.2:8470"
    on_tpu_vm.clear()
    runtime.tpu = ""
    assert distribution.tpu_address(runtime, environ={}) is None
