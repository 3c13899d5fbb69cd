"""data.packed_attention=document: each document of a packed row attends only to itself,
with positions restarting at 0, so it is scored exactly as if it were alone in the row."""

import numpy as np
import pytest

from tests.conftest import make_documents, quiet, small_config, write_jsonl
from trainer import model as model_lib
from trainer.model import documents
from trainer.run import train
from trainer.training import steps


def test_segments_positions_and_mask_by_hand():
    import tensorflow as tf

    eos = 9
    positions, mask = documents.document_inputs(tf.constant([[5, 6, eos, 7, 8, eos, 0]]), eos)
    # Documents [5 6 EOS], [7 8 EOS], then the row's tail [0] (padding or a cut document).
    assert positions.numpy().tolist() == [[0, 1, 2, 0, 1, 2, 0]]
    visible = mask.numpy()[0, 0] == 0.0
    assert visible.shape == (7, 7)
    assert visible[4].tolist() == [False, False, False, True, True, False, False]  # "8" sees "7" and itself
    assert visible[2].tolist() == [True, True, True, False, False, False, False]   # EOS ends its own document
    assert not visible[np.triu_indices(7, 1)].any()  # still causal


def test_a_packed_document_is_scored_as_if_it_were_alone(tiny_model_dir):
    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    eos = tokenizer.eos_token_id
    first = tokenizer("Note 3. The river carries the stone", add_special_tokens=False)["input_ids"] + [eos]
    second = tokenizer("Note 7. A lamp warms the garden", add_special_tokens=False)["input_ids"] + [eos]
    row = np.array([first + second], np.int32)
    alone = np.array([second], np.int32)

    def logits(ids, document_eos_id):
        return steps.logits_of(model, {"input_ids": ids, "attention_mask": np.ones_like(ids)},
                               document_eos_id).numpy()[0]

    within = logits(row, eos)[len(first):]
    np.testing.assert_allclose(within, logits(alone, None), atol=1e-4)
    np.testing.assert_allclose(logits(row, eos)[:len(first)], logits(row, None)[:len(first)], atol=1e-4)
    # GPT-2's own packing: the second document sees the first and sits at other positions.
    assert np.abs(logits(row, None)[len(first):] - logits(alone, None)).max() > 1e-2
    # The mask lives for one call: a call outside it is the row again.
    assert np.abs(logits(row, None)[len(first):] - within).max() > 1e-2


def test_a_run_with_document_attention_trains_and_scores_test_by_the_same_rule(tmp_path, tiny_model_dir):
    """Through strategy.run and tf.function: the run trains, and the test split (per-row sums on
    the chief, the same rule) equals the exported step's validation loss when they are one file."""
    path = tmp_path / "corpus.jsonl"
    documents_text = make_documents(240, seed=3)
    write_jsonl(path, documents_text[:200])
    write_jsonl(tmp_path / "validation.jsonl", documents_text[200:])
    validation = str(tmp_path / "validation.jsonl")
    reports = {}
    for attention in ("row", "document"):
        config = small_config(tmp_path / attention, str(path), tiny_model_dir, **{
            "data.packed_attention": attention, "data.validation_files": validation,
            "data.test_files": validation, "train.max_steps": 20, "train.eval_every_steps": 10})
        reports[attention] = train.train_and_evaluate(config, log=quiet)
    document = reports["document"]
    assert document["best_val_loss"] < document["initial_val_loss"]
    assert document["test"]["loss"] == pytest.approx(document["best_val_loss"], rel=1e-5)
    # The base model scores the same rows differently once documents stop seeing each other.
    assert document["initial_val_loss"] != pytest.approx(reports["row"]["initial_val_loss"], rel=1e-4)
