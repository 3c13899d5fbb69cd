"""Fine-tuning for a task: prompt/completion runs end to end, greedy completions,
task metrics at each evaluation choosing the exported weights, the review sheet,
the loss-against-metric diagnosis, and optim.learning_rate=auto."""

import csv
import json
import os
import random

import numpy as np
import pytest

from tests.conftest import ROOT, WORDS, quiet, small_config
from trainer import data as data_lib
from trainer import diagnosis, evaluation
from trainer.model import sampler
from trainer.evaluation import metrics as task_metrics
from trainer.run import train
from trainer import model as model_lib


def task_records(n: int, seed: int = 0) -> list[dict]:
    """A label per word: "Is the owl even? =>" -> " yes" or " no" (its place in WORDS).
    A 1-layer, 32-wide model learns it in 150 steps; copying a word it does not."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        word = rng.choice(WORDS)
        records.append({"prompt": f"Is the {word} even? =>", "completion": " yes" if WORDS.index(word) % 2 == 0
                        else " no"})
    return records


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    paths = []
    for name, n, seed in (("train", 400, 0), ("validation", 40, 1)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in task_records(n, seed)))
        paths.append(str(path))
    return paths


TASK = {"data.prompt_field": "prompt", "data.completion_field": "completion", "train.epochs": 3,
        "train.eval_every_steps": 10, "eval.task_examples": 16, "eval.review_examples": 6,
        "train.early_stopping_patience": 0, "preflight": "off", "data.test_fraction": 0.05}


@pytest.fixture(scope="module")
def task_run(tmp_path_factory, task_files, tiny_model_dir):
    train_file, validation_file = task_files
    config = small_config(tmp_path_factory.mktemp("task-run") / "out", train_file, tiny_model_dir,
                          **{**TASK, "data.validation_files": validation_file, "train.select_best_by": "token_f1"})
    lines = []
    return config, train.train_and_evaluate(config, log=lines.append), lines


def test_task_metrics_are_logged_at_every_evaluation_and_pick_the_export(task_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, report, lines = task_run
    points = report["history"]["validation"]
    # Every 10 steps, and at the plan's last step (the export's candidates include the end).
    assert [p["step"] for p in points] == sorted(set(range(0, report["steps"] + 1, 10)) | {report["steps"]})
    for p in points:
        assert all(0.0 <= p[f"task/{k}"] <= 100.0 for k in task_metrics.METRICS)
    f1 = [p["task/token_f1"] for p in points]
    assert max(f1) > f1[0] + 20  # the copy task is learnt, and the metric shows it
    # select_best_by=token_f1: the export is the first evaluation with the highest token F1,
    # and report.json's best_val_loss is that evaluation's loss (not the lowest loss).
    best = max(points, key=lambda p: (p["task/token_f1"], -p["step"]))
    assert report["best_step"] == best["step"]
    assert report["best_val_loss"] == best["loss"]
    summary = report["task_metrics"]
    assert summary["select_best_by"] == "token_f1" and summary["examples"] == 16
    assert summary["initial"]["token_f1"] == f1[0] and summary["exported"]["token_f1"] == max(f1)
    events = EventAccumulator(os.path.join(config.output_dir, "logs", "validation"),
                              size_guidance={"tensors": 0}).Reload()
    assert {f"task/{k}" for k in task_metrics.METRICS} <= set(events.Tags()["tensors"])
    assert "task_completions" in events.Tags()["tensors"]
    assert any("completion tokens scored" in line for line in lines)
    assert "Task metrics" in open(os.path.join(config.output_dir, "report.md")).read()


def test_the_test_split_gives_task_metrics_with_intervals(task_run):
    """The exported model's task metrics on test examples, each with a 95% interval around it."""
    _, report, lines = task_run
    test = report["test"]
    assert test["source"] == "split" and test["documents"] >= 6
    task = test["task_metrics"]
    assert task["examples"] == min(16, test["documents"])
    for name in task_metrics.METRICS:
        low, high = task[name]["interval"]
        assert 0.0 <= low <= task[name]["value"] <= high <= 100.0, (name, task[name])
    assert low < high or task["bleu"]["value"] in (0.0, 100.0)
    assert any(line.startswith("Test (") and "token_f1" in line for line in lines)


def test_the_exported_model_does_the_task_as_scored(task_run):
    """Greedy completions of the export, scored again, give the report's exported figures."""
    config, report, _ = task_run
    export = os.path.join(config.output_dir, "export")
    model, _ = model_lib.load_model(export, log=quiet)
    tokenizer = model_lib.load_tokenizer(export)
    records = [json.loads(line) for line in open(config.data.validation_files)][:16]
    task = evaluation.TaskEvaluation([(r["prompt"], r["completion"]) for r in records],
                                     report["task_metrics"]["max_new_tokens"], 32 - report["task_metrics"]["max_new_tokens"])
    scores = task_metrics.score(task.complete(model, tokenizer), task.references)
    assert scores["token_f1"] == pytest.approx(report["task_metrics"]["exported"]["token_f1"], abs=1e-6)


def test_the_serving_export_stops_each_row_at_its_eos_as_the_completions_do(task_run, tmp_path):
    """The trained model ends " yes" and " no" with EOS: the SavedModel's greedy rows stop
    there (lengths count the EOS, the rest is padding) and say what complete() says."""
    import tensorflow as tf

    config, report, _ = task_run
    export = os.path.join(config.output_dir, "export")
    model_lib.export_serving(export, str(tmp_path / "serving"), log=quiet)
    generate = tf.saved_model.load(str(tmp_path / "serving")).signatures["generate"]
    tokenizer = model_lib.load_tokenizer(export)
    prompts = [json.loads(line)["prompt"] for line in open(config.data.validation_files)][:6]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width, rows = max(map(len, ids)), len(prompts)
    out = generate(input_ids=tf.constant([i + [0] * (width - len(i)) for i in ids]),
                   lengths=tf.constant([len(i) for i in ids]), max_new_tokens=tf.fill([rows], 8),
                   temperature=tf.zeros([rows]), top_k=tf.zeros([rows], tf.int32), top_p=tf.ones([rows]),
                   seed=tf.zeros([rows], tf.int32))
    expected = sampler.complete(model_lib.load_model(export, log=quiet)[0], tokenizer, prompts, 8, 24)
    eos = tokenizer.eos_token_id
    for row, length, completion in zip(out["token_ids"].numpy(), out["lengths"].numpy(), expected):
        assert length < 8 and row[length - 1] == eos, (row, length)  # ended by EOS, not by the budget
        assert tokenizer.decode(row[:length - 1]) == completion


def test_the_review_sheet_pairs_base_and_fine_tuned_outputs_blinded(task_run):
    config, report, _ = task_run
    sheet = list(csv.DictReader(open(report["review"]["sheet"], encoding="utf-8-sig")))
    key = {row["id"]: row for row in csv.DictReader(open(report["review"]["key"], encoding="utf-8-sig"))}
    # Its prompts are the test split's (held out of the training file by data.test_fraction),
    # not validation's, whose prompts chose the exported checkpoint.
    test_pairs = data_lib.load_documents(config.data, config.seed).test_pairs
    assert len(test_pairs) >= 6
    records = [{"prompt": p, "completion": c} for p, c in test_pairs[:6]]
    assert [row["prompt"] for row in sheet] == [r["prompt"] for r in records]
    assert [row["reference"] for row in sheet] == [r["completion"] for r in records]
    assert all(row["preferred"] == "" and row["notes"] == "" for row in sheet)
    tuned = [row["output_a"] if key[row["id"]]["output_a"] == "tuned" else row["output_b"] for row in sheet]
    base = [row["output_b"] if key[row["id"]]["output_a"] == "tuned" else row["output_a"] for row in sheet]
    assert sum(key[row["id"]]["output_a"] == "tuned" for row in sheet) == 3  # balanced blinding
    # The fine-tuned side is the export's greedy completion; the base side the model at step 0.
    assert task_metrics.score(tuned, [r["completion"] for r in records])["token_f1"] > \
        task_metrics.score(base, [r["completion"] for r in records])["token_f1"]
    assert os.path.exists(os.path.join(config.output_dir, "review.html"))


def test_greedy_completions_batched_match_one_at_a_time_and_stop_at_eos(tiny_model_dir):
    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    prompts = ["Note 3. The owl", "river", "", "Note 12. Fox carries the lamp near the"]
    together = sampler.complete(model, tokenizer, prompts, max_new_tokens=8, max_prompt_tokens=24)
    alone = [sampler.complete(model, tokenizer, [p], max_new_tokens=8, max_prompt_tokens=24)[0] for p in prompts]
    assert together == alone  # left padding changes nothing
    for prompt, text in zip(prompts, together):  # = transformers' greedy decoding, cut at EOS
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        reference = model.generate(input_ids=np.array([ids]), attention_mask=np.ones([1, len(ids)]), max_new_tokens=8,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)[0, len(ids):].numpy().tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[:reference.index(tokenizer.eos_token_id)]
        assert text == tokenizer.decode(reference, skip_special_tokens=True)


def test_task_bounds_come_from_the_references_and_the_block():
    class Config:
        class eval:  # noqa: N801
            task_examples, task_max_new_tokens = 2, None

        class data:  # noqa: N801
            block_size = 16

    class Tokenizer:
        def __call__(self, texts, **_):
            return {"input_ids": [t.split() for t in texts]}

    task = evaluation.TaskEvaluation.of(Config, [("p", "a b c"), ("q", "a"), ("r", "x y z w v")], Tokenizer(), 1024)
    assert len(task.examples) == 2 and task.max_new_tokens == 3 + 1  # longest reference + EOS
    assert task.max_prompt_tokens == 16 - 4


POINTS = [{"step": 0, "loss": 4.0, "task/token_f1": 10.0},
          {"step": 10, "loss": 3.0, "task/token_f1": 10.5},
          {"step": 20, "loss": 2.5, "task/token_f1": 11.0}]


def test_diagnosis_says_when_the_loss_improves_but_the_task_does_not():
    found = diagnosis.task_metric_disagreement(POINTS, "loss")
    assert [f["label"] for f in found] == [diagnosis.TASK_DISAGREEMENT]
    assert "did not" in found[0]["summary"] and "token_f1" in found[0]["summary"]


def test_diagnosis_says_when_the_metric_peaks_elsewhere_than_the_loss():
    points = [{"step": 0, "loss": 4.0, "task/exact_match": 0.0}, {"step": 10, "loss": 3.0, "task/exact_match": 40.0},
              {"step": 20, "loss": 2.8, "task/exact_match": 25.0}]
    found = diagnosis.task_metric_disagreement(points, "loss")
    assert found == [] or "exact_match" not in found[0]["summary"]  # select_by=loss judges with token_f1
    points = [{**p, "task/token_f1": p["task/exact_match"]} for p in points]
    found = diagnosis.task_metric_disagreement(points, "loss")
    assert found[0]["next"] == ["--config.train.select_best_by=token_f1"] and "step 10" in found[0]["summary"]


def test_diagnosis_of_a_metric_that_stays_zero_speaks_of_loss_and_metric_once_each():
    """select_best_by=token_f1 with a metric stuck at 0: the export is step 0, whose loss is
    the base model's. The loss story must come from the loss curve (22% lower), not from the
    export's loss (which read "Not learning: improved only 0.00%" beside "improved 22%")."""
    losses = [4.0, 3.4, 3.2, 3.12, 3.13, 3.14, 3.15]
    points = [{"step": 10 * i, "loss": loss, "task/token_f1": 0.0} for i, loss in enumerate(losses)]
    report = {"history": {"validation": points, "train": [{"step": s, "loss": 4.0 - s / 100} for s in range(1, 61)]},
              "initial_val_loss": 4.0, "best_val_loss": 4.0, "last_val_loss": 3.15, "best_step": 0, "steps": 60,
              "stopped_early": True}
    found = diagnosis.diagnose(report, 1e-4, 1e-4, steps_per_epoch=20, epochs_planned=3, select_by="token_f1")
    found += diagnosis.task_metric_disagreement(points, "token_f1")
    text = " ".join(f["summary"] for f in found)
    assert [f["label"] for f in found] == [diagnosis.HEALTHY, diagnosis.TASK_DISAGREEMENT], found
    assert "Not learning" not in text and "0.00%" not in text
    assert "(22.0% lower)" in found[0]["summary"] and "improved 22%" in found[1]["summary"]
    # Where the weights come from is said, and by what: step 0, the base model.
    assert "step 0's weights, chosen by token_f1" in found[0]["summary"]
    assert "the base model's" in found[1]["summary"]
    assert "--config.train.select_best_by=token_f1" not in found[1]["next"]  # it already is


def test_diagnosis_is_quiet_when_loss_and_metric_agree():
    points = [{"step": s, "loss": 4.0 - s / 10, "task/token_f1": 10.0 + 3 * s} for s in (0, 10, 20)]
    assert diagnosis.task_metric_disagreement(points, "loss") == []
    assert diagnosis.task_metric_disagreement(points, "token_f1") == []


# ----------------------------------------------------------------------------- learning_rate=auto


# The pick itself is measured on the pretrained model: tests/test_recipe.py.


def test_auto_in_a_run_is_recorded_and_not_redone_on_relaunch(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir,
                          **{"optim.learning_rate": "auto", "train.max_steps": 30, "preflight": "off",
                             "eval.review_examples": 0})
    lines = []
    report = train.train_and_evaluate(config, log=lines.append)
    stored = json.load(open(os.path.join(config.output_dir, "config.json")))
    picked = stored["lr_auto"]["learning_rate"]
    assert report["learning_rate"] == stored["plan"]["learning_rate"] == picked
    assert report["learning_rate_auto"]["sweep_steps"] == stored["lr_auto"]["sweep_steps"]
    assert any(line.startswith("Learning rate auto:") and "cost" in line for line in lines)
    assert os.path.isdir(os.path.join(config.output_dir, "logs", "lr_auto"))
    again = []
    train.train_and_evaluate(config, log=again.append)  # complete: reported, no second sweep
    assert not any("range test" in line for line in again)


def test_the_doctor_checks_prompt_completion_data_and_not_as_free_text(tmp_path, task_files, tiny_model_dir):

    _, validation_file = task_files
    sample = os.path.join(ROOT, "data", "task")  # the embedded task sample: clean, one template by design
    config = small_config(tmp_path / "clean", os.path.join(sample, "train.jsonl"), tiny_model_dir,
                          **{**TASK, "data.validation_files": os.path.join(sample, "validation.jsonl"),
                             "data.block_size": 64})  # this 300-token BPE cuts the text fine
    prep = train.prepare(config, log=quiet)
    findings, stats = diagnosis.run_checks(prep.config, prep, diagnosis.estimate_parameters(prep.model_config))
    assert [(f.check, f.figure) for f in findings if f.severity != "info" and f.check != "settings"] == []
    assert "prompt_completion" in stats and "templates" not in {f.check for f in findings}
    # Seeded defects: a third of the prompts lose their separator and answer two ways, and
    # a tenth of the completions are empty.
    records = task_records(300, seed=5)
    for i, r in enumerate(records):
        if i % 3 == 0:
            r["prompt"] = r["prompt"].replace(" =>", "")
            records.append({"prompt": r["prompt"], "completion": " maybe"})
        if i % 10 == 1:
            r["completion"] = ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = small_config(tmp_path / "bad", str(bad), tiny_model_dir, **{**TASK, "data.validation_files": validation_file})
    prep = train.prepare(config, log=quiet)
    findings, _ = diagnosis.run_checks(prep.config, prep, diagnosis.estimate_parameters(prep.model_config))
    issues = {f.data.get("issue"): f.severity for f in findings if f.check == "prompt_completion"}
    assert issues["separator"] == "warning"
    assert issues["conflicting_completions"] == "warning"
    assert issues["empty_completions"] in ("warning", "error")


def test_a_run_from_before_the_new_config_keys_still_resumes(tmp_path, corpus_file, tiny_model_dir):
    """config.json of a run started before data.prompt_field (etc.) existed: those keys held
    their defaults then, so the same command still resumes it instead of being refused."""
    from trainer.training import checkpoints
    from trainer import settings

    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{"data.test_fraction": 0.05})
    requested = settings.resolve(config).to_dict()  # what a launch stores: the checked, resolved config
    for key in ("prompt_field", "completion_field", "test_fraction", "test_files"):
        del requested["data"][key]
    del requested["train"]["select_best_by"]
    os.makedirs(config.output_dir)
    with open(os.path.join(config.output_dir, "config.json"), "w") as f:
        json.dump({"tunewell": {"format": checkpoints.RUN_FORMAT}, "requested": requested}, f)
    run_dir = checkpoints.OutputDir(config.output_dir)
    with pytest.raises(Exception, match=r"data.test_fraction: 0.0 -> 0.05"):  # it had no test split
        run_dir.check_config(settings.resolve(config))
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{"data.test_fraction": 0.0})
    run_dir.check_config(settings.resolve(config))  # no error
    changed = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{"data.prompt_field": "q",
                                                                            "data.completion_field": "a",
                                                                            "data.test_fraction": 0.0})
    with pytest.raises(Exception, match="data.completion_field: '' -> 'a'"):
        run_dir.check_config(settings.resolve(changed))


def test_a_stop_request_during_task_metrics_abandons_them_and_the_review(tmp_path, task_files, tiny_model_dir,
                                                                        monkeypatch):
    """Issue 26: task metrics and the step-0 review generation ran after the last stop
    agreement, so a SIGTERM waited for every greedy completion (64 by default, and the review's
    24) against the README's "an evaluation under way is abandoned"."""
    import os
    import signal

    from trainer.evaluation import tasks
    from trainer.run import loop

    real_complete, real_review = tasks.TaskEvaluation.complete, loop.Loop.review_outputs
    task_results, review_calls = [], []

    def complete_with_a_notice(self, model, tokenizer, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the preemption notice arrives as the completions start
        task_results.append(real_complete(self, model, tokenizer, **kwargs))
        return task_results[-1]

    monkeypatch.setattr(tasks.TaskEvaluation, "complete", complete_with_a_notice)
    monkeypatch.setattr(loop.Loop, "review_outputs", lambda self, **k: review_calls.append(1) or real_review(self, **k))
    train_file, validation_file = task_files
    config = small_config(tmp_path / "out", train_file, tiny_model_dir,
                          **{**TASK, "data.validation_files": validation_file, "eval.task_examples": 40})
    with pytest.raises(train.Interrupted) as info:
        train.train_and_evaluate(config, log=quiet)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert task_results == [None]  # no chunk of completions decoded after the notice
    assert review_calls == []
    # Nothing of the abandoned evaluation was logged: the relaunch runs it whole (the resume
    # itself is tests/test_faults.py's).
    assert not os.path.exists(os.path.join(config.output_dir, "metrics.jsonl")) or all(
        json.loads(line).get("split") != "validation" for line in open(os.path.join(config.output_dir, "metrics.jsonl")))
