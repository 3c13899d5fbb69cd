"""The test split: taken by key before anything else sees the training files, scored once
on the exported model, with bootstrap intervals; nothing selects on it."""

import json
import math
import os

import numpy as np
import pytest

from tests.conftest import make_documents, quiet, small_config, write_jsonl
from trainer import data as data_lib
from trainer.data import keys
from trainer.evaluation import bootstrap
from trainer.run import train


def test_the_test_split_is_the_top_of_the_key_range_and_keeps_copies_together():
    documents = make_documents(2000) + ["a copied document"] * 30
    rest, test = keys.split_test(documents, 0.05, seed=7)
    assert len(rest) + len(test) == len(documents) and set(rest).isdisjoint(test)
    # Binomial around 5% of 2,030: 101.5 +- 9.8; four standard deviations either side.
    assert 62 <= len(test) <= 141
    assert keys.split_test(documents, 0.05, seed=7) == (rest, test)  # seeded, order-free
    assert keys.split_test(documents[::-1], 0.05, seed=7)[1] == test[::-1]
    assert keys.split_test(documents, 0.05, seed=8)[1] != test
    assert keys.split_test(documents, 0.0, seed=7) == (documents, [])
    # Every test key is above every other: the validation split (the smallest keys) never meets it.
    threshold = keys.test_threshold(0.05)
    assert all(keys.document_key(d, 7) >= threshold for d in test)
    assert all(keys.document_key(d, 7) < threshold for d in rest)


def test_load_documents_takes_test_before_validation(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, make_documents(400))
    config = small_config(tmp_path / "out", str(path), "unused", **{"data.test_fraction": 0.05})
    documents = data_lib.load_documents(config.data, config.seed)
    assert documents.test_source == "split" and 5 <= len(documents.test) <= 40
    assert len(documents.validation) == round(0.1 * (400 - len(documents.test)))  # 10% of what is left
    assert not set(documents.test) & (set(documents.train) | set(documents.validation))
    none = small_config(tmp_path / "out", str(path), "unused", **{"data.test_fraction": 0.0})
    assert data_lib.load_documents(none.data, none.seed).test == []


def test_bootstrap_intervals_hold_the_estimate_narrow_with_more_units_and_are_seeded():
    rng = np.random.default_rng(0)
    sums, counts = rng.gamma(2.0, 30.0, 400), rng.integers(20, 40, 400).astype(float)
    estimate = sums.sum() / counts.sum()
    low, high = bootstrap.ratio_interval(sums, counts, seed=1)
    assert low < estimate < high
    assert bootstrap.ratio_interval(sums, counts, seed=1) == [low, high]
    wide = bootstrap.ratio_interval(sums[:100], counts[:100], seed=1)
    # A quarter of the units: about twice as wide (the standard error goes as 1/sqrt(n)).
    assert 1.4 < (wide[1] - wide[0]) / (high - low) < 2.8
    # A mean of 0/100 scores: 30 of 100 right -> about 30 +- 9.
    scores = [100.0] * 30 + [0.0] * 70
    low, high = bootstrap.mean_interval(scores, seed=0)
    assert 19 < low < 25 and 35 < high < 41
    generic = bootstrap.statistic_interval(len(scores), lambda picks: float(np.mean(np.array(scores)[picks])), 0)
    assert generic[0] == pytest.approx(low, abs=4) and generic[1] == pytest.approx(high, abs=4)
    assert bootstrap.ratio_interval([1.0], [2.0], seed=0) is None


@pytest.fixture(scope="module")
def corpus_and_validation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    train_path, validation_path = folder / "train.jsonl", folder / "validation.jsonl"
    documents = make_documents(340, seed=5)
    write_jsonl(train_path, documents[:300])
    write_jsonl(validation_path, documents[300:])
    return str(train_path), str(validation_path)


def test_the_test_loss_is_the_exported_models_loss_by_the_evaluation_arithmetic(tmp_path, corpus_and_validation,
                                                                                 tiny_model_dir):
    """With the validation file as the test file, the test loss (per-row sums on the chief,
    after the export) equals the exported step's validation loss (the distributed eval step):
    the same weights, the same tokens, the same arithmetic. (The test scores each packed
    document alone, as at inference; validation does too with packed_attention=document.)"""
    train_file, validation_file = corpus_and_validation
    config = small_config(tmp_path / "out", train_file, tiny_model_dir, **{
        "data.validation_files": validation_file, "data.test_files": validation_file, "train.max_steps": 30,
        "train.eval_every_steps": 10, "data.packed_attention": "document"})
    lines = []
    report = train.train_and_evaluate(config, log=lines.append)
    test = report["test"]
    assert test["source"] == "files" and test["documents"] == 40
    assert test["loss"] == pytest.approx(report["best_val_loss"], rel=1e-5)
    assert test["perplexity"] == pytest.approx(math.exp(test["loss"]))
    low, high = test["perplexity_interval"]
    assert low < test["perplexity"] < high
    assert test["loss_interval"][0] == pytest.approx(math.log(low))
    assert any(line.startswith("Test (40 documents nothing was selected on): perplexity") for line in lines)
    card = open(os.path.join(config.output_dir, "report.md")).read()
    assert "## Test" in card and "95% interval" in card
    assert json.load(open(report["report_path"]))["test"]["loss"] == test["loss"]
    assert report["timing"]["test_seconds"] > 0


def test_the_test_split_scores_packed_documents_alone_whatever_the_training_attention(
        tmp_path, corpus_and_validation, tiny_model_dir):
    """A model trained with GPT-2's row attention is still tested as it will be used: each
    document alone from position 0; its validation (row attention) scores the same rows
    otherwise."""
    train_file, validation_file = corpus_and_validation
    config = small_config(tmp_path / "out", train_file, tiny_model_dir, **{
        "data.validation_files": validation_file, "data.test_files": validation_file, "train.max_steps": 20,
        "train.eval_every_steps": 10, "data.packed_attention": "row"})
    report = train.train_and_evaluate(config, log=quiet)
    assert report["test"]["loss"] != pytest.approx(report["best_val_loss"], rel=1e-4)


def test_no_test_split_is_said_not_hidden(tmp_path, corpus_and_validation, tiny_model_dir):
    train_file, _ = corpus_and_validation
    config = small_config(tmp_path / "out", train_file, tiny_model_dir, **{
        "data.test_fraction": 0.0, "train.max_steps": 10})
    lines = []
    report = train.train_and_evaluate(config, log=lines.append)
    assert report["test"] is None
    assert any("no test split (--config.data.test_fraction=0)" in line for line in lines)
    assert "No test split" in open(os.path.join(config.output_dir, "report.md")).read()
