"""Where a training step's time goes: TensorFlow's profiler over tunewell's default path.

    .venv/bin/python bench/profile_step.py [--model distilgpt2] [--steps 2]

Uses the models and corpus bench_speed.py built in bench/.work/ (run `make bench`
first). Traces a few steps of the trainer's own train loop (after the first,
compiling, call) and prints the share of CPU op time per op type, grouped into
matmuls, the cross-entropy over the vocabulary, element-wise/normalisation and
the rest. Writes bench/profile.md.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# Op types by what they do (TensorFlow/oneDNN kernel names as the profiler records them).
GROUPS = {
    "matmul": ("MatMul", "BatchMatMul", "_MklMatMul", "_MklBatchMatMul", "_MklNativeBatchMatMul",
               "_MklNativeMatMul", "_MklFusedMatMul", "_MklNativeFusedMatMul", "Einsum", "_MklEinsum"),
    "cross-entropy over the vocabulary": ("SparseSoftmaxCrossEntropyWithLogits",),
    "softmax (attention)": ("Softmax", "_MklSoftmax"),
}


def group_of(op: str) -> str:
    for group, ops in GROUPS.items():
        if op in ops or any(op.startswith(o) for o in ops):
            return group
    if op.startswith("Cast"):
        return "casts (bfloat16 <-> float32)"
    if op in ("RandomUniform", "GreaterEqual"):
        return "dropout masks"
    return "other"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="distilgpt2")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import bench_speed as bench
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from trainer import data as data_lib, model as model_lib, settings

    from trainer.training import distribution, optimization, steps

    from trainer.run import train

    shape = bench.MODELS[args.model]
    files = {"dir": os.path.join(bench.WORK, "models", args.model),
             "train": os.path.join(bench.WORK, "data", shape["tokenizer"], "train.jsonl"),
             "heldout": os.path.join(bench.WORK, "data", shape["tokenizer"], "heldout.jsonl")}
    config = bench.tunewell_config({"model": args.model, **files, "block_size": shape["block_size"],
                                    "batch_size": shape["batch_size"], "steps": args.steps + 1,
                                    "precision": None})
    config = settings.resolve(config)
    strategy = distribution.get_strategy(config.runtime, log=lambda m: None)
    precision = distribution.set_precision(config.runtime, strategy, log=lambda m: None)
    prep = train.prepare(config, log=lambda m: None)
    with strategy.scope():
        model, _ = model_lib.load_model(config.model.name_or_path, log=lambda m: None)
        optimizer = optimization.make_optimizer(prep.plan, config.optim,
                                                loss_scaling=distribution.uses_loss_scaling(precision))
        optimizer.build(model.trainable_variables)
    loop = steps.make_train_loop(model, optimizer, strategy, 1, config.optim.max_grad_norm)
    iterator = iter(data_lib.distributed_train_data(strategy, prep.train_source, config.train.batch_size,
                                                    prep.plan.steps_per_epoch, prep.plan.total_steps, 0,
                                                    config.seed))
    float(loop(iterator, tf.constant(1), tf.constant(0.0))[0]["loss_sum"])  # compiles: not profiled
    logdir = tempfile.mkdtemp(prefix="tunewell-profile-")
    tf.profiler.experimental.start(logdir)
    float(loop(iterator, tf.constant(args.steps), tf.constant(0.0))[0]["loss_sum"])
    tf.profiler.experimental.stop()

    # XPlane: planes (host threads) -> lines -> events, each naming an op by metadata id.
    # TensorFlow op events carry "name:type"; their durations are summed by type.
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    by_type = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                op = name.rsplit(":", 1)[-1].strip()
                # Containers (the executor's Process/Run, the function itself) hold the ops: not counted.
                if ":" in name and op not in ("Process", "Run") and not op.startswith("__"):
                    by_type[op] += event.duration_ps / 1e12
    total = sum(by_type.values())
    groups = collections.Counter()
    for op, seconds in by_type.items():
        groups[group_of(op)] += seconds
    lines = [f"# Where a training step's time goes ({args.model}, {precision}, "
             f"{config.train.batch_size} x {config.data.block_size} tokens)", "",
             f"TensorFlow profiler over {args.steps} step(s) of tunewell's train loop (after the compiling call); "
             f"CPU op time summed over threads ({total:.1f} s in all; 2 cores run ops in parallel, so this "
             "exceeds the wall time).", "", "| group | share of op time |", "|---|---:|"]
    lines += [f"| {g} | {s / total:.0%} |" for g, s in groups.most_common()]
    lines += ["", "| op type (top 15) | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {op} | {s:.2f} | {s / total:.0%} |" for op, s in by_type.most_common(15)]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(REPO, "bench", "profile.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
