"""End to end: training learns, writes its contract, resumes exactly, stops early
with the best weights, and exports a model that reloads and generates."""

import json
import os
import signal

import numpy as np
import pytest

from tests.conftest import quiet, run_cli, small_config
from trainer import model as model_lib
from trainer.run import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus_file, tiny_model_dir):
    output = tmp_path_factory.mktemp("run") / "out"
    config = small_config(output, corpus_file, tiny_model_dir, **{"train.epochs": 3})
    return config, train.train_and_evaluate(config, log=quiet)


def test_training_lowers_validation_loss(finished_run):
    _, report = finished_run
    assert report["initial_val_loss"] > 5.0  # ~ln(300) for a random 300-token model
    assert report["best_val_loss"] < 0.7 * report["initial_val_loss"]
    assert report["final_val_perplexity"] < 0.3 * report["initial_val_perplexity"]
    train_losses = [p["loss"] for p in report["history"]["train"]]
    assert train_losses[-1] < 0.6 * train_losses[0]


def test_outputs_follow_the_contract(finished_run):
    config, report = finished_run
    out = config.output_dir
    for name in ("config.json", "report.json", "metrics.jsonl", "logs/train", "logs/validation",
                 "checkpoints/checkpoint", "checkpoints/best", "export/tf_model.h5",
                 "export_pytorch/model.safetensors"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "export", "model.safetensors"))  # would break TF loading
    on_disk = json.load(open(os.path.join(out, "report.json")))
    for key in ("best_val_loss", "best_step", "initial_val_loss", "final_val_perplexity", "steps",
                "train_tokens", "tokens_per_sec", "stopped_early", "export_dir"):
        assert key in on_disk, key
    assert on_disk["steps"] == report["steps"] > 0
    assert on_disk["train_tokens"] == report["steps"] * 8 * 32  # packed: every position is a token
    resolved = json.load(open(os.path.join(out, "config.json")))
    assert resolved["config"]["optim"]["learning_rate"] == 3e-3
    assert resolved["config"]["train"]["eval_every_steps"] >= 1  # derived, not None
    assert "train.eval_every_steps" in resolved["derived"]


def test_tensorboard_events_read_back(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, report = finished_run
    train_events = EventAccumulator(os.path.join(config.output_dir, "logs", "train"),
                                    size_guidance={"tensors": 0}).Reload()
    val_events = EventAccumulator(os.path.join(config.output_dir, "logs", "validation"),
                                  size_guidance={"tensors": 0}).Reload()
    tags = set(train_events.Tags()["tensors"])
    assert {"loss", "perplexity", "learning_rate", "grad_norm", "tokens_per_sec", "config"} <= tags
    assert "accuracy" not in tags  # an argmax over the vocabulary at every step: validation only
    assert {"loss", "perplexity", "accuracy", "generations"} <= set(val_events.Tags()["tensors"])
    from tensorboard.util.tensor_util import make_ndarray

    val_loss = {e.step: float(make_ndarray(e.tensor_proto)) for e in val_events.Tensors("loss")}
    assert val_loss[0] == pytest.approx(report["initial_val_loss"], rel=1e-5)
    assert min(val_loss.values()) == pytest.approx(report["best_val_loss"], rel=1e-5)
    generations = val_events.Tensors("generations")
    assert len(generations) == len(val_loss)
    assert make_ndarray(generations[-1].tensor_proto).item().decode().startswith("**")


def test_export_reloads_and_generates(finished_run):
    from transformers import TFAutoModelForCausalLM, pipeline

    config, report = finished_run
    exported = TFAutoModelForCausalLM.from_pretrained(report["export_dir"])
    best, _ = model_lib.load_model(report["export_dir"], log=quiet)
    ids = np.array([[1, 2, 3, 4]], np.int32)
    np.testing.assert_array_equal(exported(ids).logits.numpy(), best(ids).logits.numpy())
    # dtype=None: transformers 4.57's pipeline default dtype="auto" needs torch (NameError without it).
    generator = pipeline("text-generation", model=report["export_dir"], framework="tf", dtype=None)
    text = generator("river stone", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith("river stone") and len(text) > len("river stone")
    result = run_cli("trainer.generate", f"--model_dir={report['export_dir']}", "--prompt=The river",
                     "--prompt=A lamp", "--max_new_tokens=5", "--num_beams=2", "--no_repeat_ngram_size=2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("The river") and lines[1].startswith("A lamp")


def test_export_holds_the_best_weights_not_the_last(tmp_path, corpus_file, tiny_model_dir):
    """Few documents, a high learning rate and many epochs: validation loss turns up,
    training stops early and the export is the step with the lowest validation loss."""
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{
        "train.epochs": 40, "train.eval_every_steps": 4, "train.early_stopping_patience": 2,
        "optim.learning_rate": 1e-2, "data.validation_fraction": 0.5, "train.batch_size": 4})
    report = train.train_and_evaluate(config, log=quiet)
    assert report["stopped_early"]
    assert report["steps"] < report["planned_steps"]
    assert report["best_step"] < report["steps"]
    assert report["last_val_loss"] > report["best_val_loss"]
    # The exported model scores the best validation loss, not the last one.
    import tensorflow as tf

    from trainer import data, evaluation, settings
    from trainer.training import steps

    exported, _ = model_lib.load_model(report["export_dir"], log=quiet)
    tokenizer = model_lib.load_tokenizer(report["export_dir"])
    documents = data.load_documents(config.data, config.seed)
    blocks = data.make_blocks(documents.validation, tokenizer, config.data, "v", keep_tail=True, seed=config.seed)
    eos = settings.document_eos_id(settings.resolve(config).data, tokenizer.eos_token_id)  # as the run scored
    metrics = evaluation.evaluate(steps.make_eval_step(exported, tf.distribute.get_strategy(), eos),
                                  data.eval_dataset(blocks, 4, tokenizer.pad_token_id))
    assert metrics["loss"] == pytest.approx(report["best_val_loss"], rel=1e-4)


def test_interrupted_run_resumes_at_the_right_step(tmp_path, corpus_file, tiny_model_dir):
    overrides = {"train.epochs": 3, "train.eval_every_steps": 10, "train.log_every_steps": 1,
                 "train.early_stopping_patience": 0}
    straight = train.train_and_evaluate(small_config(tmp_path / "a", corpus_file, tiny_model_dir, **overrides),
                                        log=quiet)

    def interrupt_at_step_20(message):
        if message.startswith("Step 20:"):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled by the trainer

    config = small_config(tmp_path / "b", corpus_file, tiny_model_dir, **overrides)
    with pytest.raises(train.Interrupted) as info:
        train.train_and_evaluate(config, log=interrupt_at_step_20)
    assert info.value.exit_code == 128 + signal.SIGINT
    assert "ckpt-20.index" in os.listdir(os.path.join(config.output_dir, "checkpoints"))
    resumed = train.train_and_evaluate(config, log=quiet)

    assert resumed["steps"] == straight["steps"] == straight["planned_steps"]
    steps = [p["step"] for p in resumed["history"]["train"]]
    assert steps == list(range(1, resumed["steps"] + 1))  # no step repeated or skipped
    lr_straight = [p["learning_rate"] for p in straight["history"]["train"]]
    assert [p["learning_rate"] for p in resumed["history"]["train"]] == pytest.approx(lr_straight)
    # Same data order and optimizer state: the curves match the uninterrupted run.
    loss_straight = [p["loss"] for p in straight["history"]["train"]]
    assert [p["loss"] for p in resumed["history"]["train"]] == pytest.approx(loss_straight, rel=1e-3)
    assert resumed["best_val_loss"] == pytest.approx(straight["best_val_loss"], rel=1e-3)
    assert resumed["initial_val_loss"] == straight["initial_val_loss"]


def test_gradient_accumulation_gives_the_same_update(tiny_model_dir):
    """grad_accum_steps splits the batch, not the loss: one step either way lands on the same weights."""
    import tensorflow as tf

    from configs import default
    from trainer.training import optimization, steps

    rng = np.random.default_rng(0)
    batch = {"input_ids": tf.constant(rng.integers(1, 300, [8, 16]), tf.int32),
             "attention_mask": tf.constant(np.ones([8, 16]), tf.int32)}
    labels = batch["input_ids"].numpy().copy()
    labels[:3, 10:] = -100  # uneven supervision across micro-batches
    batch["labels"] = tf.constant(labels)
    plan = optimization.TrainingPlan(1, 1, 10, 1, 1e-2, 1, 1, 1, {})
    results = []
    for accum in (1, 4):
        model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
        optimizer = optimization.make_optimizer(plan, default.get_config().optim)
        step = steps.make_train_step(model, optimizer, tf.distribute.get_strategy(), accum, 1.0)
        out = step(batch)
        results.append((out, [w.numpy() for w in model.trainable_weights]))
    (one, w1), (four, w4) = results
    assert float(one["loss_sum"]) == pytest.approx(float(four["loss_sum"]), rel=1e-5)
    assert float(one["grad_norm"]) == pytest.approx(float(four["grad_norm"]), rel=1e-4)
    for a, b in zip(w1, w4):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_loss_is_the_mean_over_supervised_tokens():
    import tensorflow as tf

    from trainer.training.steps import token_sums

    logits = tf.constant(np.log([[[0.4, 0.6], [0.9, 0.1], [0.2, 0.8]]]), tf.float32)
    labels = tf.constant([[0, 0, -100]])  # position 0 predicts label[1]=0 (p 0.4); label[2] is ignored
    loss_sum, count, correct = token_sums(logits, labels)
    assert (float(count), float(correct)) == (1.0, 0.0)
    assert float(loss_sum) == pytest.approx(-np.log(0.4), rel=1e-6)
    labels = tf.constant([[0, 0, 0]])  # now position 1 predicts 0 with p 0.9 (correct)
    loss_sum, count, correct = token_sums(logits, labels)
    assert (float(count), float(correct)) == (2.0, 1.0)
    assert float(loss_sum) == pytest.approx(-np.log(0.4) - np.log(0.9), rel=1e-6)


def test_the_compiled_sampler_matches_transformers_generate(tiny_model_dir):
    """The evaluation's compiled sampler (key/value cache, left padding, positions from
    the mask) gives transformers' greedy tokens when top_p keeps only the best token."""
    import tensorflow as tf

    from trainer.model import sampler

    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    tokenizer.padding_side = "left"
    encoded = tokenizer(["river stone", "the lamp was lit at"], return_tensors="tf", padding=True)
    assert int(tf.reduce_min(tf.reduce_sum(encoded["attention_mask"], 1))) < encoded["input_ids"].shape[1]
    reference = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=None)[:, encoded["input_ids"].shape[1]:].numpy()
    ours = sampler._sampler(model)(tf.cast(encoded["input_ids"], tf.int32),
                                      tf.cast(encoded["attention_mask"], tf.int32), tf.constant(6),
                                      tf.constant(0), tf.constant(1.0), tf.constant(1e-6),
                                      tf.constant(-1)).numpy()  # eos -1: never stops early
    np.testing.assert_array_equal(ours, reference)
    samples = sampler.sample_generations(model, tokenizer, ["river stone", ""], 5, seed=3)
    assert samples == sampler.sample_generations(model, tokenizer, ["river stone", ""], 5, seed=3)  # seeded
    assert [s["tokens"] for s in samples] and all(1 <= s["tokens"] <= 5 for s in samples)


def test_a_call_of_several_steps_stops_at_the_first_non_finite_step(tiny_model_dir):
    import tensorflow as tf

    from configs import default
    from trainer.training import optimization, steps

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 300, [4, 16]).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    optimizer = optimization.make_optimizer(optimization.TrainingPlan(1, 1, 10, 1, 1e-3, 1, 1, 1, {}),
                                            default.get_config().optim)
    loop = steps.make_train_loop(model, optimizer, tf.distribute.get_strategy(), 1, 1.0)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    out, _ = loop(iterator, tf.constant(3), tf.constant(0.0))
    assert float(out["steps"]) == 3 and int(optimizer.iterations) == 3 and np.isfinite(float(out["loss_sum"]))
    weight = model.trainable_weights[0]
    weight.assign(tf.fill(weight.shape, float("nan")))
    out, _ = loop(iterator, tf.constant(5), tf.constant(0.0))
    assert float(out["steps"]) == 1 and int(optimizer.iterations) == 4  # the 4 steps after it never ran
    assert not np.isfinite(float(out["loss_sum"]))


def test_report_says_where_the_wall_time_went(finished_run):
    _, report = finished_run
    timing = report["timing"]
    parts = ("training", "evaluation", "generation", "export", "report")
    assert all(timing[f"{p}_seconds"] > 0 for p in parts), timing
    assert sum(timing[f"{p}_seconds"] for p in parts) < timing["wall_seconds"]
    assert 0 < timing["startup_seconds"] < timing["first_step_seconds"] < timing["wall_seconds"]
    assert timing["training_share"] == pytest.approx(timing["training_seconds"] / timing["wall_seconds"], rel=0.05)


def test_the_train_loop_has_no_loop_nested_in_it(tiny_model_dir):
    """With a tf.range over micro-batches inside the tf.range over steps, 6-layer models with
    GPT-2's vocabulary failed at the first training call (AlreadyExistsError on a Grappler
    AddOpsRewrite tmp_var; too slow to reproduce here): the micro-batches are unrolled."""
    import tensorflow as tf

    from configs import default
    from trainer.training import optimization, steps

    ids = np.ones([4, 16], np.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "labels": ids}
    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    optimizer = optimization.make_optimizer(optimization.TrainingPlan(1, 1, 10, 1, 1e-3, 1, 1, 1, {}),
                                            default.get_config().optim)
    loop = steps.make_train_loop(model, optimizer, tf.distribute.get_strategy(), 2, 1.0)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    graph = loop.get_concrete_function(iterator, tf.constant(2), tf.constant(0.0)).graph.as_graph_def()
    ops = [node.op for node in graph.node] + [node.op for f in graph.library.function for node in f.node_def]
    assert sum(op in ("While", "StatelessWhile") for op in ops) == 1, sorted(set(ops))


def test_the_end_shows_base_and_fine_tuned_side_by_side(finished_run):
    config, report = finished_run
    comparison = report["comparison"]
    assert comparison["base_perplexity"] == report["initial_val_perplexity"]
    assert comparison["tuned_perplexity"] == report["final_val_perplexity"]
    assert len(comparison["samples"]) == config.eval.num_prompts
    for sample in comparison["samples"]:
        assert sample["base"] is not None and sample["tuned"] is not None  # base recorded at step 0
    from trainer import reporting

    lines = reporting.summary_lines(report)
    # The comparison closes the summary: its head line, then per prompt the prompt, base, fine-tuned.
    assert lines[-3 * len(comparison["samples"]) - 1].startswith("Base model -> fine-tuned")
    assert lines[-2].lstrip().startswith("base:") and lines[-1].lstrip().startswith("fine-tuned:")
    card = open(os.path.join(config.output_dir, "report.md")).read()
    assert "## Base model and fine-tuned model" in card and "| prompt | base model | fine-tuned |" in card


def test_the_shipped_base_model_loads_into_float32_as_any_checkpoint():
    """data/pretrained/tunewell-base: float16 on disk (half the bytes), float32 once loaded."""
    import h5py
    import tensorflow as tf

    from tests.conftest import ROOT

    folder = os.path.join(ROOT, "data", "pretrained", "tunewell-base")
    with h5py.File(os.path.join(folder, "tf_model.h5")) as f:
        dtypes = set()
        f.visititems(lambda name, obj: dtypes.add(str(obj.dtype)) if isinstance(obj, h5py.Dataset) else None)
    assert dtypes == {"float16"}
    from transformers import AutoTokenizer

    model, _ = model_lib.load_model(folder, log=quiet)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert all(w.dtype == tf.float32 for w in model.weights)
    assert model_lib.count_parameters(model) == 5_322_240 and len(tokenizer) == 8192
    card = json.load(open(os.path.join(folder, "build.json")))
    assert {deb["licence"].split()[0] for deb in card["corpus"].values()} == {"PSF", "WordNet"}
    # It has learnt English, technical and everyday: common phrases are far likelier than
    # under a uniform guess (ln 8192 = 9.0 nats a token).
    for text in ("The function returns a list of the values in the order they were added.",
                 "They walked along the river in the morning and stopped to rest under a tree."):
        ids = tokenizer(text, return_tensors="tf")["input_ids"]
        logits = model(ids, training=False).logits[:, :-1]
        loss = float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(ids[:, 1:], logits,
                                                                                    from_logits=True)))
        assert loss < 6.0, (text, loss)
