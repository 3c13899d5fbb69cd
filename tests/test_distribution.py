"""Several replicas give the one-device result: the loss is the mean over every
supervised token of the GLOBAL batch, so replicas holding different amounts of
padding weigh each token the same. Run in a fresh process: logical CPU devices
must be set before TensorFlow starts."""

import json
import sys
import textwrap

import pytest

from tests.conftest import ROOT, cli_args, run_cli, small_config

COMPARE = textwrap.dedent("""
    import json, sys
    import trainer
    from configs import default
    from trainer.training import distribution, optimization, steps
    from trainer import model as model_lib
    config = default.get_config().runtime
    config.strategy, config.cpu_devices = "mirrored", 2
    mirrored = distribution.get_strategy(config, log=lambda m: None)
    import numpy as np, tensorflow as tf
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 300, [8, 16]).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:4, 5:] = 0  # replica 0 (rows 0-3) is mostly padding, replica 1 has none
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, ids, -100).astype(np.int32)}
    plan = optimization.TrainingPlan(1, 1, 10, 1, 1e-2, 1, 1, 1, {})
    out = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")), ("two", mirrored)):
        with strategy.scope():
            model, _ = model_lib.load_model(sys.argv[1], log=lambda m: None)
            optimizer = optimization.make_optimizer(plan, default.get_config().optim)
        step = steps.make_train_step(model, optimizer, strategy, 1, 1.0)
        data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        result = {k: float(v) for k, v in step(next(iter(data))).items()}
        result["weights"] = [float(np.sum(np.abs(w.numpy()))) for w in model.trainable_weights]
        result["replicas"] = strategy.num_replicas_in_sync
        out[name] = result
    # The trainer's input: replica r of 2 gets rows [4r, 4r + 4) of the one-device global batch.
    from trainer import data
    blocks = data.Blocks(ids, mask, batch["labels"], documents=8, tokens=int(mask.sum()))
    whole = next(iter(data.train_dataset(blocks, 8, 1, 1, 0, seed=5)))["input_ids"].numpy()
    split = next(iter(data.distributed_train_data(mirrored, blocks, 8, 1, 1, 0, seed=5)))["input_ids"]
    out["replica_rows_match"] = bool(np.array_equal(
        np.concatenate([t.numpy() for t in mirrored.experimental_local_results(split)]), whole))
    print("RESULT" + json.dumps(out))
""")


def test_two_replicas_match_one_device_with_uneven_padding(tiny_model_dir):
    import subprocess

    done = subprocess.run([sys.executable, "-c", COMPARE, tiny_model_dir], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT", 1)[1])
    one, two = out["one"], out["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["count"] == one["count"] == 4 * 4 + 4 * 15  # supervised targets: 4 per padded row, 15 per full row
    for key in ("loss_sum", "grad_norm", "tokens"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-5)
    assert out["replica_rows_match"]


def test_training_on_two_logical_cpus_through_the_cli(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir)
    done = run_cli("trainer.task", *cli_args(config, **{"runtime.cpu_devices": 2, "train.epochs": 1,
                                                        "preflight": "off"}))
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "Strategy: mirrored (MirroredStrategy), 2 replica(s)." in output
    assert "2 replica(s) x 4 rows = global batch 8 rows x 32 tokens = 256 tokens/step." in output
    report = json.load(open(tmp_path / "out" / "report.json"))
    assert report["best_val_loss"] < report["initial_val_loss"]


def test_auto_precision_follows_what_the_hardware_computes_natively(tmp_path):
    import tensorflow as tf

    from trainer.training import distribution

    default_strategy = tf.distribute.get_strategy()
    cases = [({"avx2", "avx512f", "avx512_bf16"}, None, "mixed_bfloat16"),  # Intel/AMD with AVX-512 BF16
             ({"avx2", "amx_bf16"}, None, "mixed_bfloat16"),                 # Sapphire Rapids AMX
             ({"avx2", "fma"}, None, "float32"),                            # AVX2 only: emulated bfloat16
             (set(), [(8, 0), (9, 0)], "mixed_bfloat16"),                    # A100 + H100
             (set(), [(7, 5), (8, 0)], "mixed_float16")]                     # a T4 among them: its units decide
    for flags, gpus, expected in cases:
        policy, why = distribution.auto_precision(default_strategy, flags=flags, gpu_capabilities=gpus)
        assert policy == expected, (flags, gpus, why)
        assert why
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert {"avx2", "avx512_bf16"} <= distribution.cpu_flags(str(cpuinfo))
    assert distribution.cpu_flags(str(tmp_path / "missing")) == set()


def test_steps_per_call_fits_about_two_seconds_and_stops_at_the_log_interval():
    import tensorflow as tf

    from trainer.training import distribution

    strategy = tf.distribute.get_strategy()
    assert distribution.steps_per_call(strategy, 0.05, log_every_steps=10) == 10   # 40 fit; the log comes first
    assert distribution.steps_per_call(strategy, 0.05, log_every_steps=100) == 40
    assert distribution.steps_per_call(strategy, 3.0, log_every_steps=10) == 1     # a slow step: one per call


def test_a_peer_lost_before_the_loop_is_one_line_not_a_traceback():
    """The chief audits while the others wait in preflight's vote: a collective that times out
    there (DeadlineExceeded) or finds its peer gone is PeerLost, as it is inside the loop."""
    import types

    import tensorflow as tf

    from trainer.run import train as train_lib
    from trainer.training import distribution

    two = types.SimpleNamespace(cluster=distribution.Cluster(workers=2, task_type="worker", task_index=1,
                                                              is_chief=False))
    for error in (tf.errors.DeadlineExceededError(None, None, "Collective ops timed out after 1800 s"),
                  tf.errors.UnavailableError(None, None, "failed to connect to all addresses")):
        with pytest.raises(distribution.PeerLost, match=r"worker:1: another worker of this 2-worker job stopped "
                                                        r"\(.*\)\. Relaunch the whole job"):
            with train_lib._peers_watched(two):
                raise error
    one = types.SimpleNamespace(cluster=distribution.Cluster())
    with pytest.raises(tf.errors.DeadlineExceededError):  # one process: no peer to blame
        with train_lib._peers_watched(one):
            raise tf.errors.DeadlineExceededError(None, None, "timed out")


def test_a_batch_that_does_not_split_over_the_replicas_is_refused_before_any_write(tmp_path, corpus_file,
                                                                                    tiny_model_dir):
    """Issue 26: config.json used to be written before the batch checks, so a relaunch with
    the fix was refused as "other settings (train.batch_size: 15 -> 16)", and eval.batch_size=3
    on 2 replicas ended in a raw ValueError traceback."""
    from trainer.errors import UserError
    from trainer.training import distribution

    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir)
    done = run_cli("trainer.task", *cli_args(config, **{"runtime.cpu_devices": 2, "preflight": "off",
                                                        "train.batch_size": 7}))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--config.train.batch_size=7" in done.stderr and "2 replicas" in done.stderr
    assert "--config.train.batch_size=6" in done.stderr and "Traceback" not in done.stderr  # a value that fits
    # Nothing written, so the relaunch with the fix starts a new run (an empty folder is one).
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(UserError, match=r"--config.eval.batch_size=3 must divide evenly over 2 replicas.*"
                                        r"--config.eval.batch_size=2"):
        distribution.check_batch(TwoReplicas(), 8, 1, eval_batch=3)
    distribution.check_batch(TwoReplicas(), 8, 1, eval_batch=None)  # unset: train.batch_size's 8
