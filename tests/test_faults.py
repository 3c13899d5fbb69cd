"""Fault injection: the real CLI, killed with SIGKILL at chosen and at random instants,
then relaunched with the same command, must end as if it had never been stopped.

Chosen instants come from TUNEWELL_FAULT (trainer/faults.py): the process kills
itself at a named point, so "between the best weights and the latest state"
is hit exactly. Random instants come from outside (Popen + SIGKILL after a
random delay). After every relaunch: the same steps, the same learning rate
at every step, the same data order (the same per-step losses, dropout 0), an
export whose weights are the best checkpoint that report.json names, and the
same validation loss (exactly with dropout 0, within 1% with dropout 0.1).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, cli_args, quiet, run_cli, small_config
from trainer import model as model_lib
from trainer.run import train

# 216 training documents -> 27 steps/epoch at 8 x 32 tokens; 2 epochs = 54 steps,
# evaluations every 10 steps, a checkpoint at each, every step logged.
OVERRIDES = {"train.epochs": 2, "train.eval_every_steps": 10, "train.log_every_steps": 1,
             "train.early_stopping_patience": 0, "preflight": "off"}
KILLED = -signal.SIGKILL


def fault_config(output, corpus_file, model_dir, **extra):
    return small_config(output, corpus_file, model_dir, **{**OVERRIDES, **extra})


def launch(config, fault=None, **extra):
    """The CLI; .output is what it printed (progress lines on stdout, bar and errors on stderr)."""
    result = run_cli("trainer.task", *cli_args(config, **{**OVERRIDES, **extra}),
                     env={"TUNEWELL_FAULT": fault or ""})
    result.output = result.stdout + result.stderr
    return result


def report_of(config):
    return json.load(open(os.path.join(config.output_dir, "report.json")))


def history(config, split):
    points = [json.loads(line) for line in open(os.path.join(config.output_dir, "metrics.jsonl"))]
    return [p for p in points if p["split"] == split]


def best_checkpoint_weights(config, model_dir):
    """The weights in checkpoints/best/ckpt-N, N = report.json's best_step."""
    import tensorflow as tf

    report = report_of(config)
    model, _ = model_lib.load_model(model_dir, log=quiet)
    path = os.path.join(config.output_dir, "checkpoints", "best", f"ckpt-{report['best_step']}")
    tf.train.Checkpoint(model=model).read(path).expect_partial().assert_existing_objects_matched()
    return {model_lib.canonical_name(w.name): w.numpy() for w in model.weights}


def assert_export_is_the_best_checkpoint(config, model_dir):
    exported, _ = model_lib.load_model(os.path.join(config.output_dir, "export"), log=quiet)
    best = best_checkpoint_weights(config, model_dir)
    for w in exported.weights:
        np.testing.assert_array_equal(w.numpy(), best[model_lib.canonical_name(w.name)], err_msg=w.name)


def assert_same_run(resumed, straight, exact=True):
    """Same steps, same learning rate at every step, same data order and result."""
    assert resumed["steps"] == straight["steps"] == straight["planned_steps"]
    train_r, train_s = resumed["history"]["train"], straight["history"]["train"]
    assert [p["step"] for p in train_r] == [p["step"] for p in train_s] == list(range(1, straight["steps"] + 1))
    assert [p["learning_rate"] for p in train_r] == pytest.approx([p["learning_rate"] for p in train_s],
                                                                  rel=1e-9)
    assert [p["step"] for p in resumed["history"]["validation"]] == \
        [p["step"] for p in straight["history"]["validation"]]
    if exact:  # dropout 0: bit for bit (any other batch or optimizer state changes the loss)
        assert [p["loss"] for p in train_r] == [p["loss"] for p in train_s]
        assert resumed["best_val_loss"] == straight["best_val_loss"]
        assert resumed["last_val_loss"] == straight["last_val_loss"]
        assert resumed["best_step"] == straight["best_step"]
    else:
        assert resumed["best_val_loss"] == pytest.approx(straight["best_val_loss"], rel=0.01)
        assert resumed["last_val_loss"] == pytest.approx(straight["last_val_loss"], rel=0.01)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file, tiny_model_dir):
    """The uninterrupted run every faulted run must reproduce."""
    config = fault_config(tmp_path_factory.mktemp("straight") / "out", corpus_file, tiny_model_dir)
    return train.train_and_evaluate(config, log=quiet)


# Each kill, then a relaunch that resumes from what it left and is killed at the next
# point, until a last relaunch finishes: every instant is followed by a resume, and the
# per-step losses of every resumed stretch end up in the compared history. One chain of
# 7 launches instead of 6 separate kill-and-relaunch pairs (12 launches, ~70 s more).
CHAIN = [
    "after_best_save@0",          # after the base model's evaluation, before any checkpoint
    "checkpoint_save@20+0.01",    # while the latest state is being written (resumes from 10)
    "train_step@23+0.005",        # during a training step (resumes from 10 again: 20 was never whole)
    "after_best_save@30",         # between the best weights and the state that names them
    "after_checkpoint_save@40",   # after the state, before the old best is deleted
    "export_write",               # half-way through writing the export
]


def test_sigkill_chain_then_relaunch_matches_the_uninterrupted_run(tmp_path, corpus_file, tiny_model_dir,
                                                                   straight):
    config = fault_config(tmp_path / "out", corpus_file, tiny_model_dir)
    for number, fault in enumerate(CHAIN):
        killed = launch(config, fault)
        assert killed.returncode == KILLED, f"{fault} was never reached: {killed.stderr[-1500:]}"
        assert ("Resuming from" in killed.output) == (number > 0 and CHAIN[number - 1] != "after_best_save@0"
                                                      ), f"{fault}: {killed.output[-1500:]}"
        assert not os.path.exists(os.path.join(config.output_dir, "report.json"))
        if fault == "after_best_save@30":  # the best weights of step 30 exist, no state names them yet
            best = os.listdir(os.path.join(config.output_dir, "checkpoints", "best"))
            assert "ckpt-30.index" in best
    relaunched = launch(config)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert "Resuming from" in relaunched.output
    resumed = report_of(config)
    assert_same_run(resumed, straight)
    assert_export_is_the_best_checkpoint(config, tiny_model_dir)
    best_dir = os.path.join(config.output_dir, "checkpoints", "best")
    assert sorted(os.listdir(best_dir)) == [f"ckpt-{resumed['best_step']}.data-00000-of-00001",
                                            f"ckpt-{resumed['best_step']}.index"]


def test_sigkill_with_dropout_resumes_within_tolerance(tmp_path, corpus_file, tiny_dropout_model_dir):
    # The uninterrupted run in this process (one TensorFlow start-up fewer than a CLI run).
    straight_run = train.train_and_evaluate(
        fault_config(tmp_path / "straight", corpus_file, tiny_dropout_model_dir), log=quiet)
    config = fault_config(tmp_path / "out", corpus_file, tiny_dropout_model_dir)
    assert launch(config, "after_checkpoint_save@30").returncode == KILLED
    assert launch(config).returncode == 0
    assert_same_run(report_of(config), straight_run, exact=False)
    assert_export_is_the_best_checkpoint(config, tiny_dropout_model_dir)


def test_kill_during_export_leaves_the_previous_export_whole(tmp_path, corpus_file, tiny_model_dir, straight):
    config = fault_config(tmp_path / "out", corpus_file, tiny_model_dir)
    # Killed right after the export was published, before report.json: the run is not complete.
    assert launch(config, "after_export").returncode == KILLED
    export = os.path.join(config.output_dir, "export")
    before = {name: open(os.path.join(export, name), "rb").read() for name in os.listdir(export)}
    for fault in ("export_write", "export_swap"):  # mid-write, and just before the swap
        assert launch(config, fault).returncode == KILLED
        assert {n: open(os.path.join(export, n), "rb").read() for n in os.listdir(export)} == before
        from transformers import TFAutoModelForCausalLM

        TFAutoModelForCausalLM.from_pretrained(export)  # loads as it is
    leftovers = [n for n in os.listdir(config.output_dir) if ".tmp-" in n]
    assert leftovers  # the killed writes left their temporary folders ...
    finished = launch(config)
    assert finished.returncode == 0
    assert "could not be found" not in finished.output  # the optimizer is built before the restore
    assert not [n for n in os.listdir(config.output_dir) if ".tmp-" in n or ".old-" in n]  # ... now gone
    assert_same_run(report_of(config), straight)
    assert_export_is_the_best_checkpoint(config, tiny_model_dir)


def test_sigkill_at_random_instants(tmp_path, corpus_file, tiny_model_dir, straight):
    """Killed from outside at random moments until it finishes: the end is the same."""
    config = fault_config(tmp_path / "out", corpus_file, tiny_model_dir)
    rng = random.Random(11)
    kills = 0
    for attempt in range(8):
        process = subprocess.Popen([sys.executable, "-m", "trainer.task", *cli_args(config, **OVERRIDES)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if attempt < 4:
            time.sleep(rng.uniform(4.0, 14.0))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        stderr = process.communicate(timeout=300)[1]
        report = os.path.join(config.output_dir, "report.json")
        export = os.path.join(config.output_dir, "export")
        if os.path.exists(export):  # whatever the instant, an export present is a whole one
            model_lib.load_model(export, log=quiet)
        if os.path.exists(report):  # finished (perhaps killed while exiting): export = best named
            assert_export_is_the_best_checkpoint(config, tiny_model_dir)
        if process.returncode == 0:
            break
        assert process.returncode == KILLED, stderr[-3000:]
    assert kills >= 1
    assert_same_run(report_of(config), straight)
    assert_export_is_the_best_checkpoint(config, tiny_model_dir)


def test_nan_gradient_stops_before_saving_and_the_last_checkpoint_resumes(tmp_path, corpus_file,
                                                                           tiny_model_dir, straight):
    import tensorflow as tf

    config = fault_config(tmp_path / "out", corpus_file, tiny_model_dir)
    failed = launch(config, "nan_grad@20")  # step 20 would be saved: the NaN must stop it first
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "At step 20 the training loss was" in failed.stderr and "gradient norm nan" in failed.stderr
    assert "the last good checkpoint is" in failed.stderr and "ckpt-10." in failed.stderr
    checkpoints = os.path.join(config.output_dir, "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-10")
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoints))
    floats = [reader.get_tensor(name) for name, _ in tf.train.list_variables(checkpoints)
              if reader.get_variable_to_dtype_map()[name].is_floating]
    assert floats and all(np.isfinite(t).all() for t in floats)
    resumed = launch(config)
    assert resumed.returncode == 0 and "Resuming from" in resumed.output and "at step 10 of" in resumed.output
    assert_same_run(report_of(config), straight)


def test_stop_request_on_an_evaluation_step_saves_first(tmp_path, corpus_file, tiny_model_dir, straight,
                                                        monkeypatch):
    """SIGTERM during the step before an evaluation: the state is saved without evaluating or
    generating; the evaluation runs first thing on resume, so the run ends the same."""
    from trainer.model import sampler
    from trainer.training import steps

    make_train_loop = steps.make_train_loop
    generations = []

    def with_sigterm_at_step_20(model, optimizer, *args):
        train_loop = make_train_loop(model, optimizer, *args)

        def run(iterator, num_steps, stop_requested):
            out = train_loop(iterator, num_steps, stop_requested)
            if int(optimizer.iterations) == 20:
                os.kill(os.getpid(), signal.SIGTERM)  # a real preemption notice, mid-run
            return out
        return run

    sample = sampler.sample_generations
    monkeypatch.setattr(model_lib, "sample_generations",  # the evaluation's samples (1 prompt), not the review's
                        lambda model, tokenizer, prompts, *a, **k: (len(prompts) == 1 and generations.append(1))
                        or sample(model, tokenizer, prompts, *a, **k))
    monkeypatch.setattr(steps, "make_train_loop", with_sigterm_at_step_20)
    config = fault_config(tmp_path / "out", corpus_file, tiny_model_dir)
    with pytest.raises(train.Interrupted) as info:
        train.train_and_evaluate(config, log=quiet)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert len(generations) == 2  # steps 0 and 10; none at 20
    assert [p["step"] for p in history(config, "validation")] == [0, 10]
    assert "ckpt-20.index" in os.listdir(os.path.join(config.output_dir, "checkpoints"))
    monkeypatch.setattr(steps, "make_train_loop", make_train_loop)
    assert_same_run(train.train_and_evaluate(config, log=quiet), straight)


def test_early_stopped_or_finished_run_is_not_trained_again(tmp_path, corpus_file, tiny_model_dir):
    extra = {"train.epochs": 40, "train.eval_every_steps": 4, "train.early_stopping_patience": 2,
             "optim.learning_rate": 1e-2, "data.validation_fraction": 0.5, "train.batch_size": 4}
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{**OVERRIDES, **extra})
    assert launch(config, "after_export", **extra).returncode == KILLED
    relaunched = launch(config, **extra)
    assert relaunched.returncode == 0, relaunched.stderr[-2000:]
    report = report_of(config)
    assert report["stopped_early"] and report["steps"] < report["planned_steps"]
    resumed_part = relaunched.output.split("Resuming from")[1]
    assert f"at step {report['steps']} of" in resumed_part
    assert not re.search(r"Step \d+: validation loss", resumed_part)  # no evaluation, no training
    assert max(p["step"] for p in history(config, "train")) == report["steps"]  # no step after the stop
    # Once complete, a re-run says so and touches nothing.
    files = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
             for r, _, fs in os.walk(config.output_dir) for f in fs}
    again = launch(config, **extra)
    assert again.returncode == 0 and "already complete: nothing to do" in again.output
    assert "could not be found" not in again.output
    assert {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
            for r, _, fs in os.walk(config.output_dir) for f in fs} == files


def test_a_wsd_decay_started_by_validation_survives_sigkills_before_and_during_it(tmp_path, corpus_file,
                                                                                   tiny_model_dir):
    """wsd's decay start is validation's decision, kept in the run state with the weights: a
    kill between the evaluation that started it and the next save, or during the decay, and a
    relaunch, must end at the same step with the same learning rate at every step."""
    extra = {"optim.schedule": "wsd", "train.epochs": 40, "train.eval_every_steps": 4,
             "train.early_stopping_patience": 3, "optim.learning_rate": 1e-2,
             "data.validation_fraction": 0.5, "train.batch_size": 4, "train.checkpoint_every_steps": 8}
    straight_run = train.train_and_evaluate(
        small_config(tmp_path / "straight", corpus_file, tiny_model_dir, **{**OVERRIDES, **extra}), log=quiet)
    start = straight_run["decay_started_at"]
    assert start is not None, "validation never stopped improving: the test needs a run that plateaus"
    length = max(1, round(0.2 * start))
    assert straight_run["steps"] == start + length < straight_run["planned_steps"]
    assert not straight_run["stopped_early"]
    lrs = {p["step"]: p["learning_rate"] for p in straight_run["history"]["train"]}
    assert lrs[start] == pytest.approx(1e-2)  # the peak up to the evaluation that started it
    assert lrs[start + length] == pytest.approx(1e-3)  # the floor on the last step
    assert straight_run["diagnosis"][0]["label"] == "healthy"
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{**OVERRIDES, **extra})
    # start is an evaluation step (a multiple of 4). A kill while its state is being written
    # (or, between saves, in the next step) loses the decision, which the relaunch must make
    # again from the checkpoint before; a kill late in the decay must keep it.
    for fault in (f"checkpoint_save@{start}+0.01" if start % 8 == 0 else f"train_step@{start + 1}+0.005",
                  f"train_step@{start + length - 1}+0.005"):
        killed = launch(config, fault, **extra)
        assert killed.returncode == KILLED, f"{fault} was never reached: {killed.stderr[-1500:]}"
    relaunched = launch(config, **extra)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    resumed = report_of(config)
    assert (resumed["decay_started_at"], resumed["steps"]) == (start, straight_run["steps"])
    assert [p["learning_rate"] for p in resumed["history"]["train"]] == pytest.approx(
        [p["learning_rate"] for p in straight_run["history"]["train"]], rel=1e-9)
    assert [p["loss"] for p in resumed["history"]["train"]] == [p["loss"] for p in straight_run["history"]["train"]]
    assert resumed["best_val_loss"] == straight_run["best_val_loss"]
