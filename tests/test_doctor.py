"""The doctor finds each defect seeded into clean data, with the right severity;
short real trainings that go wrong on purpose get the right diagnosis."""

import json
import os

import numpy as np
import pytest

from tests.conftest import make_documents, quiet, run_cli, small_config, write_jsonl
from trainer import data, diagnosis
from trainer.run import train
from trainer.errors import UserError

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "sample", "corpus.jsonl")


def checks(config):
    prep = train.prepare(config, log=quiet)
    findings, _ = diagnosis.run_checks(config, prep, diagnosis.estimate_parameters(prep.model_config))
    return findings


def severities(findings, check):
    return {f.severity for f in findings if f.check == check}


def test_clean_corpus_has_no_error(tmp_path, tiny_model_dir):
    findings = checks(small_config(tmp_path / "o", SAMPLE, tiny_model_dir, **{"train.epochs": 3}))
    assert not [f for f in findings if f.severity == "error"], diagnosis.terminal_summary(findings)


def test_duplicates_are_an_error(tmp_path, tiny_model_dir):
    docs = make_documents(200)
    path = write_jsonl(tmp_path / "dup.jsonl", docs + docs[:60])  # 60 of 260 are copies
    findings = checks(small_config(tmp_path / "o", path, tiny_model_dir))
    assert "error" in severities(findings, "duplicates")


def test_a_big_corpus_is_audited_on_a_key_sample_with_the_corpus_duplicate_rate(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """The chief's audit reads at most AUDIT_TEXT_BYTES of text (here a third of the corpus),
    chosen by key, so its time does not grow with the corpus while the other workers wait;
    copies are sampled with their original, so the duplicate error still stands."""
    from trainer.diagnosis import audit, preflight

    docs = make_documents(200)
    path = write_jsonl(tmp_path / "dup.jsonl", docs + docs[:60])  # 60 of 260 are copies
    seen = {}
    real = audit.audit_corpus

    def counted(train_docs, *args, **kwargs):
        seen["documents"] = len(train_docs)
        return real(train_docs, *args, **kwargs)

    monkeypatch.setattr(preflight, "AUDIT_TEXT_BYTES", sum(len(d.encode()) for d in docs + docs[:60]) // 3)
    monkeypatch.setattr(audit, "audit_corpus", counted)
    findings = checks(small_config(tmp_path / "o", path, tiny_model_dir))
    sample = [f for f in findings if f.check == "size" and "uniform sample" in f.figure]
    assert len(sample) == 1 and sample[0].data["sampled"] == seen["documents"]
    documents = sample[0].data["documents"]
    assert documents > 200 and 0.2 * documents <= seen["documents"] <= 0.5 * documents  # ~1/3 (binomial)
    assert "error" in severities(findings, "duplicates")


def test_a_run_on_prepared_data_reports_the_findings_prepare_wrote(tmp_path, tiny_model_dir):
    from trainer.run import preparation

    docs = make_documents(200)
    path = write_jsonl(tmp_path / "dup.jsonl", docs + docs[:60])
    config = small_config(tmp_path / "o", path, tiny_model_dir, **{"data.prepared_dir": str(tmp_path / "prep")})
    preparation.prepare_data(config, log=quiet)
    written = diagnosis.prepared_findings(str(tmp_path / "prep"))
    assert "error" in severities(written, "duplicates") and "labels" in {f.check for f in written}
    findings = checks(config)  # reads no document: prepare_data found these
    assert [f for f in findings if f.check != "settings" and f.check != "size"] == [
        f for f in written if f.check != "size"]  # prepare's findings, then the run's own settings checks
    assert "error" in severities(findings, "duplicates")


def test_templated_examples_are_an_error(tmp_path, tiny_model_dir):
    names = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana"]
    templated = [f"Order {1000 + 7 * i} shipped on 2024-03-{1 + i % 28:02d} to {names[i % 8]}."
                 for i in range(120)]
    path = write_jsonl(tmp_path / "tpl.jsonl", templated + make_documents(80))
    findings = checks(small_config(tmp_path / "o", path, tiny_model_dir))
    assert "error" in severities(findings, "templates")


def test_truncation_at_block_size_is_reported(tmp_path, tiny_model_dir):
    long_docs = [" ".join(d for d in make_documents(6, seed=i)) for i in range(120)]  # ~100+ tokens each
    path = write_jsonl(tmp_path / "long.jsonl", long_docs)
    findings = checks(small_config(tmp_path / "o", path, tiny_model_dir, **{"data.batching": "padded"}))
    assert "error" in severities(findings, "length")
    fix = next(f.fix for f in findings if f.check == "length" and f.severity == "error")
    assert "--config.data.block_size=" in fix or "batching=packed" in fix


def test_train_validation_leakage_is_an_error(tmp_path, corpus_file, tiny_model_dir):
    docs = [json.loads(line)["text"] for line in open(corpus_file)]
    val = write_jsonl(tmp_path / "val.jsonl", docs[:20])  # validation copied from training
    findings = checks(small_config(tmp_path / "o", corpus_file, tiny_model_dir,
                                   **{"data.validation_files": val}))
    assert "error" in severities(findings, "leakage")


def test_too_little_data_is_a_warning(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "small.jsonl", make_documents(40))
    findings = checks(small_config(tmp_path / "o", path, tiny_model_dir, **{"train.epochs": 2}))
    size = [f for f in findings if f.check == "size" and f.severity == "warning"]
    assert size and "tokens per" in size[0].figure
    assert "warning" in severities(findings, "settings")  # 36 examples x 2 epochs < 100


def test_huge_learning_rate_is_an_error(tmp_path, corpus_file, tiny_model_dir):
    findings = checks(small_config(tmp_path / "o", corpus_file, tiny_model_dir, **{"optim.learning_rate": 1e-1}))
    lr = [f for f in findings if f.check == "settings" and "learning rate" in f.figure]
    assert lr and lr[0].severity == "error" and "--config.optim.learning_rate=" in lr[0].fix


def test_eos_masked_by_pad_as_eos_is_an_error():
    eos = 0
    token_docs = [np.array([5, 6, eos], np.int32), np.array([7, 8, 9, eos], np.int32)]
    good = data.pad_blocks(token_docs, block_size=6, pad_token_id=eos)
    assert not [f for f in diagnosis.label_findings(good, eos) if f.severity == "error"]
    # The classic bug: labels masked where the id equals the pad id, which is also EOS.
    bad = data.pad_blocks(token_docs, block_size=6, pad_token_id=eos)
    bad.labels = np.where(bad.input_ids == eos, data.IGNORE_INDEX, bad.input_ids).astype(np.int32)
    errors = [f for f in diagnosis.label_findings(bad, eos) if f.severity == "error"]
    assert len(errors) == 1 and "real EOS tokens are masked" in errors[0].figure
    # Padding with labels, and labels shifted in the data as well as in the loss.
    padded_scored = data.pad_blocks(token_docs, block_size=6, pad_token_id=eos)
    padded_scored.labels = padded_scored.input_ids.copy()
    assert any("padding positions carry labels" in f.figure for f in diagnosis.label_findings(padded_scored, eos))
    shifted = data.pack_blocks([np.arange(1, 40, dtype=np.int32)], block_size=8)
    shifted.labels = np.concatenate([shifted.input_ids[:, 1:], np.full([4, 1], -100)], axis=1).astype(np.int32)
    assert any("NEXT input token" in f.figure for f in diagnosis.label_findings(shifted, eos))


def test_strict_preflight_stops_before_any_output(tmp_path, tiny_model_dir):
    docs = make_documents(200)
    path = write_jsonl(tmp_path / "dup.jsonl", docs + docs[:80])
    config = small_config(tmp_path / "out", path, tiny_model_dir, **{"preflight": "strict"})
    with pytest.raises(UserError, match="doctor found .* error"):
        train.train_and_evaluate(config, log=quiet)
    assert not os.path.exists(tmp_path / "out")


def test_doctor_cli_writes_its_files_and_exits_on_errors(tmp_path, corpus_file, tiny_model_dir):
    args = ["--config=configs/default.py", f"--config.output_dir={tmp_path}/out",
            f"--config.data.train_files={corpus_file}", f"--config.model.name_or_path={tiny_model_dir}",
            "--config.data.block_size=32", "--config.train.batch_size=8", "--config.train.epochs=3"]
    clean = run_cli("trainer.doctor", *args, "--config.optim.learning_rate=3e-3")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert "Doctor: 0 error(s)" in clean.stdout
    report = json.load(open(tmp_path / "out" / "doctor.json"))
    assert {f["check"] for f in report["findings"]} >= {"size", "labels", "length"}
    assert (tmp_path / "out" / "doctor.md").read_text().startswith("# Doctor")
    bad = run_cli("trainer.doctor", *args, "--config.optim.learning_rate=0.1")
    assert bad.returncode == 1 and "ERROR [settings] learning rate 0.1" in bad.stdout


# ----------------------------------------------------------------------------- diagnosis of real runs


def test_diagnosis_overfit_names_the_best_step(tmp_path, corpus_file, tiny_model_dir):
    """No early stopping: the run goes on well past the turn (with early stopping a small rise
    after the turn is the recipe working: test_diagnosis_of_curves)."""
    # 43 steps an epoch; at this constant rate the validation loss turns near step 100 (test_faults'
    # wsd run on the same data), so 8 epochs run well past it.
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{
        "train.epochs": 8, "train.eval_every_steps": 8, "train.early_stopping_patience": 0,
        "optim.schedule": "constant",
        "optim.learning_rate": 1e-2, "data.validation_fraction": 0.5, "train.batch_size": 4})
    report = train.train_and_evaluate(config, log=quiet)
    top = report["diagnosis"][0]
    assert top["label"] == diagnosis.OVERFIT, top
    assert f"step {report['best_step']}" in top["summary"] and report["best_step"] < report["steps"]
    assert "curves.png" in open(os.path.join(config.output_dir, "report.md")).read()
    assert os.path.getsize(os.path.join(config.output_dir, "curves.png")) > 1000


def _curve_report(val_losses, stopped_early, every=10):
    """A report.json shape for diagnose(): validation every `every` steps, training loss falling."""
    val = [{"step": i * every, "loss": loss} for i, loss in enumerate(val_losses)]
    best = min(val, key=lambda p: p["loss"])
    steps = val[-1]["step"]
    return {"history": {"validation": val, "train": [{"step": s, "loss": 4.0 - s / 100} for s in range(1, steps + 1)]},
            "initial_val_loss": val[0]["loss"], "best_val_loss": best["loss"], "last_val_loss": val[-1]["loss"],
            "best_step": best["step"], "steps": steps, "stopped_early": stopped_early}


@pytest.mark.parametrize("losses, stopped_early, label", [
    # Early stopping three evaluations after the turn, validation up 1.6%: the recipe worked.
    ([3.6, 3.2, 3.05, 3.0, 3.02, 3.03, 3.05], True, diagnosis.HEALTHY),
    # The same turn, but the run was not stopped (patience 0) and went on: overfit, fewer epochs.
    ([3.6, 3.2, 3.05, 3.0, 3.02, 3.03, 3.05, 3.1, 3.2], False, diagnosis.OVERFIT),
    # Stopped early after a fast turn, +8% in three evaluations: still overfit.
    ([3.6, 3.2, 3.0, 3.1, 3.2, 3.24], True, diagnosis.OVERFIT),
    # The plan's end one evaluation after the best, up 2% (the task sample's last two
    # evaluations): noise around a minimum, not overfitting; the export holds the best.
    ([7.591, 2.786, 1.835, 1.712, 1.519, 1.346, 1.229, 1.182, 1.139, 1.162], False, diagnosis.HEALTHY),
    # Still falling at the last evaluation of the plan.
    ([3.6, 3.3, 3.2, 3.1, 3.05], False, diagnosis.UNDERFIT),
    # Still lower at each evaluation, but flattened out: the last two intervals gave 0.0035
    # nats (the main job's own curve at the rule's rate): converged, not underfit.
    ([5.775, 5.48, 5.33, 5.25, 5.22, 5.2014, 5.2001, 5.1995, 5.1979], False, diagnosis.HEALTHY),
    # A low loss still falling 2% of perplexity in two intervals (the task sample's tail): underfit.
    ([6.03, 1.25, 0.9, 0.6, 0.5991, 0.5854, 0.5778], False, diagnosis.UNDERFIT),
])
def test_diagnosis_of_curves(losses, stopped_early, label):
    findings = diagnosis.diagnose(_curve_report(losses, stopped_early), 1e-4, 1e-4, steps_per_epoch=20,
                                  epochs_planned=3)
    assert findings[0]["label"] == label, findings[0]
    if label == diagnosis.HEALTHY:
        assert findings[0]["next"] == []
        best_step = 10 * losses.index(min(losses))
        expected = ("early stopping ended the run at step 60" if stopped_early else
                    "flattened out" if losses[-1] == min(losses) else f"best at step {best_step} of")
        assert expected in findings[0]["summary"], findings[0]["summary"]


def test_a_wsd_decay_that_validation_started_is_the_end_it_chose_not_underfitting():
    """wsd: flat at the peak rate for two evaluations, then the decay brings the loss down
    to the end: still falling at the last step, as every decay is, and healthy; the same
    curve without a decay started by validation reads as underfit."""
    losses = [3.6, 3.2, 3.05, 3.0, 3.01, 3.02, 2.95, 2.9, 2.86]
    report = {**_curve_report(losses, False), "decay_started_at": 50}
    findings = diagnosis.diagnose(report, 1e-4, 1e-4, steps_per_epoch=20, epochs_planned=20)
    assert findings[0]["label"] == diagnosis.HEALTHY, findings[0]
    assert "decayed from step 50 (epoch 2.5) to the run's end at step 80" in findings[0]["summary"]
    report["decay_started_at"] = None
    assert diagnosis.diagnose(report, 1e-4, 1e-4, steps_per_epoch=20, epochs_planned=20)[0]["label"] == \
        diagnosis.UNDERFIT


def test_diagnosis_huge_learning_rate(tmp_path, corpus_file, tiny_model_dir):
    """lr 1.0: validation loss climbs far above the base model's, then the decay brings it
    back below its start; still a learning rate that was too high (one outcome, no NaN)."""
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{
        "optim.learning_rate": 1.0, "train.early_stopping_patience": 0, "train.eval_every_steps": 10})
    report = train.train_and_evaluate(config, log=quiet)
    top = report["diagnosis"][0]
    assert top["label"] == diagnosis.LR_TOO_HIGH, report["diagnosis"]
    assert top["evidence"]["peak_val_loss"] > 1.2 * report["initial_val_loss"]
    assert top["next"] == ["--config.optim.learning_rate=0.1"]


def test_diagnosis_tiny_learning_rate_is_not_learning(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{"optim.learning_rate": 1e-9})
    report = train.train_and_evaluate(config, log=quiet)
    top = report["diagnosis"][0]
    assert top["label"] == diagnosis.LR_TOO_LOW, top
    assert top["next"] == ["--config.optim.learning_rate=0.001"]


def test_generation_health_figures():
    samples = [{"completion": "the the the the the the", "tokens": 6, "ended_with_eos": False},
               {"completion": "a river runs past the old mill", "tokens": 7, "ended_with_eos": True}]
    index = diagnosis.TrainingNgrams(["we saw that a river runs past the old mill today"], n=4)
    health = diagnosis.generation_health(samples, index)
    assert health["repetition"] == pytest.approx(3 / 9)  # 4 + 5 trigrams, 3 repeats in the first
    assert health["ended_with_eos"] == 0.5 and health["mean_length_tokens"] == 6.5
    assert health["memorised"] == pytest.approx(4 / 7)  # 4 of the 7 generated 4-grams are in training


def test_monitor_flags_overfitting_and_divergence():
    train_points = [{"loss": x} for x in (5.0, 4.0, 3.0, 2.5)]
    val = [{"loss": x} for x in (5.0, 4.0, 3.9, 4.1, 4.3)]
    assert "overfitting" in diagnosis.monitor(train_points, val)
    val = [{"loss": x} for x in (5.0, 4.0, 3.9, 6.0)]
    assert "divergence" in diagnosis.monitor(train_points, val)


def points(values):
    return [{"loss": float(v)} for v in values]


def test_monitor_is_quiet_on_a_plateau_and_noisy_batches():
    """A converged run wiggles by 3e-4 nats between evaluations, and a corpus of mixed
    sources gives training windows 10-15% apart: neither is a problem worth a warning."""
    plateau = points(np.r_[[5.0, 3.0, 2.5], 2.3 + 3e-4 * np.array([1, -1, 1, -1, 1, -1, 1, -1])])
    # Windows of code (~1.7 nats) and prose (~2.6): the last is ordinary, though 1.6x the minimum.
    mixed = points([2.5, 1.7, 2.6, 2.4, 1.8, 2.7, 2.5, 2.3, 1.75, 2.6, 2.8])
    found = diagnosis.monitor(mixed, plateau)
    assert not {"oscillation", "overfitting", "loss_spike"} & set(found), found


def test_monitor_still_flags_real_oscillation_and_spikes():
    train = points(np.r_[2.5 + 0.02 * np.random.default_rng(1).standard_normal(20), 4.0])
    swinging = points([5.0, 3.0, 2.6, 2.9, 2.55, 2.85, 2.5, 2.8, 2.45])
    found = diagnosis.monitor(train, swinging)
    assert {"oscillation", "loss_spike"} <= set(found), found


def test_examples_times_epochs_only_warns_when_a_change_would_help(tmp_path, corpus_file, tiny_model_dir):
    from trainer.training import optimization

    def example_epoch_findings(documents, epochs, derived=False):
        config = small_config(tmp_path / "o", corpus_file, tiny_model_dir)
        plan = optimization.TrainingPlan(100, epochs, 100 * epochs, 6, 3e-3, 10, 10, 256,
                                         {"train.epochs": "derived"} if derived else {})
        found = diagnosis.settings_findings(config, plan, documents, 32, 10_000, 10 ** 6)
        return [f for f in found if "examples x epochs" in f.figure]

    assert not example_epoch_findings(30_000, 1)      # a big corpus at 1 epoch: ordinary
    assert not example_epoch_findings(20_000, 3)      # ... and at the usual 3
    assert not example_epoch_findings(10_000, 10, derived=True)  # the package's own choice
    too_many = example_epoch_findings(10_000, 6)
    assert too_many and too_many[0].fix.startswith("--config.train.epochs=2")
    too_few = example_epoch_findings(20, 2)
    assert too_few and too_few[0].fix == "more training data, or --config.train.epochs=5"
    for finding in too_few + too_many:  # never a suggestion equal to the current setting
        assert f"--config.train.epochs={2 if finding in too_few else 6}" not in finding.fix


def test_overfit_one_batch_passes_on_a_sound_model(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "o", corpus_file, tiny_model_dir)
    finding = diagnosis.overfit_one_batch(config, train.prepare(config, log=quiet), log=quiet)
    assert finding.severity == "info", finding
    assert finding.data["last_loss"] < 0.3 * finding.data["first_loss"]
