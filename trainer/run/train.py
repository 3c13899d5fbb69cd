"""train_and_evaluate: the whole run, as a table of contents of named stages.

    open_run        settings, who this process is, what output_dir already holds
    start_devices   strategy and precision (before any other TensorFlow op)
    prepare_inputs  documents, tokenizer, rows and plan (the stored plan on a resume)
    preflight       batch checks and the doctor's; errors stop a strict run before any write
    load_weights    the model, its vocabulary matched (a bad checkpoint is refused before any write)
    open_outputs    config.json, doctor.json, the worker's own folder
    build           learning rate (=auto: a range test), optimizer, steps, validation data
    restore         the latest checkpoint, the run state and the run log
    Loop.run        train, log, evaluate, early-stop, checkpoint (trainer/run/loop.py)
    finish          best weights, exports, review sheet, report

Nothing is written to the output directory until every input has been checked;
report.json is written last and marks a finished run. Each stage takes and
returns small dataclasses, so its signature says what it needs.
"""

import contextlib
import dataclasses

from trainer import data as data_lib
from trainer import diagnosis
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer import settings
from trainer.errors import UserError
from trainer.run import finish as finish_lib
from trainer.run.inputs import Prepared, prepare
from trainer.run.stages import Built, Devices, Launch, Outputs
from trainer.run.loop import Interrupted, Loop, restore  # noqa: F401  (Interrupted: trainer.task catches it here)
from trainer.training import checkpoints as ckpt_lib
from trainer.training import distribution
from trainer.training import lr_range
from trainer.training import optimization
from trainer.training import steps as steps_lib


def train_and_evaluate(config, log=reporting.say) -> dict:
    """Train `config`'s model on its data; returns the report (report.json's content)."""
    launch = open_run(config, log)
    if launch.run_dir.complete:
        log(f"{launch.config.output_dir} holds this run, already complete: nothing to do. Report: "
            f"{launch.run_dir.report_path}. Use a new --config.output_dir to train again.")
        return filesystem.read_json(launch.run_dir.report_path)
    devices = start_devices(launch, log)
    with _peers_watched(launch):  # the collectives before the loop (the loop watches its own)
        prep = prepare_inputs(launch, devices, log)
        findings, audit_stats = preflight(launch, devices, prep, log)
        model, loaded_from = load_weights(launch, devices, prep, log)
        outputs = open_outputs(launch, prep, findings, audit_stats)
        built = build(launch, devices, prep, outputs, model, loaded_from, log)
    progress = restore(launch, prep, outputs, built, log)
    loop = Loop(launch, devices, prep, outputs, built, progress, log)
    step = loop.run()
    if not launch.chief:
        log(f"{launch.cluster.name}: trained {step} steps; the chief ({launch.config.output_dir}) exports "
            "and reports.")
        return {"steps": step, "worker": launch.cluster.name, "best_val_loss": loop.state["best_val_loss"]}
    return finish_lib.finish(launch, devices, prep, outputs, built, loop, step, log)


@contextlib.contextmanager
def _peers_watched(launch: Launch):
    """A collective that fails because a peer is gone (UnavailableError, or DeadlineExceeded
    after COLLECTIVE_TIMEOUT_SECONDS) is PeerLost, one line and a relaunch hint, as in the
    loop: a worker waiting in preflight's vote while the chief audits used to die with a
    traceback."""
    try:
        yield
    except distribution.peer_errors() as e:
        if launch.cluster.workers == 1:
            raise
        raise distribution.PeerLost(launch.cluster, e) from None


def open_run(config, log) -> Launch:
    """Read only: a finished run is reported, not redone; a different run or a folder that is
    not a run is refused before any data is read. A gs:// bucket is checked first:
    TensorFlow retries forever on a missing one."""
    config = settings.resolve(config)
    cluster = distribution.cluster()
    filesystem.check_output_location(config.output_dir, write=cluster.is_chief)
    run_dir = ckpt_lib.OutputDir(config.output_dir)
    if run_dir.stored:
        run_dir.check_config(config)
    return Launch(config, cluster, run_dir, reporting.Timings())


def start_devices(launch: Launch, log) -> Devices:
    """Before any other TensorFlow op: logical CPUs, multi-worker collectives and the TPU
    system are set up at program start."""
    strategy = distribution.get_strategy(launch.config.runtime, log)
    return Devices(strategy, distribution.set_precision(launch.config.runtime, strategy, log))


def prepare_inputs(launch: Launch, devices: Devices, log) -> Prepared:
    """Documents, tokenizer, rows and plan; on a resume, checked against the stored data and
    given the first launch's plan, so the schedule is the same step for step."""
    config, chief = launch.config, launch.chief
    if not chief and config.model.bootstrap_tiny:
        distribution.barrier(devices.strategy)  # the chief builds the tiny model first (a shared disk sees it)
    prep = prepare(config, log)
    if chief and config.model.bootstrap_tiny:
        distribution.barrier(devices.strategy)
    if launch.run_dir.stored:
        launch.run_dir.check_data(prep.fingerprint)
        prep = dataclasses.replace(prep, plan=launch.run_dir.stored_plan(prep.plan, config))
    return prep


def preflight(launch: Launch, devices: Devices, prep: Prepared, log) -> tuple[list, dict]:
    """The doctor on the chief: (findings, audit stats). With preflight=strict, an error
    stops every worker (the vote is agreed) before anything is written."""
    config = launch.config
    # Settings the strategy decides come first: a refused batch must leave no config.json
    # behind, or the relaunch with the fix is refused as "other settings".
    distribution.check_batch(devices.strategy, config.train.batch_size, config.train.grad_accum_steps,
                             config.eval.batch_size)
    findings, audit_stats = [], {}
    if config.preflight != "off" and launch.chief:
        findings, audit_stats = diagnosis.run_checks(config, prep, diagnosis.estimate_parameters(prep.model_config),
                                                     devices.strategy.num_replicas_in_sync)
        log(diagnosis.terminal_summary(findings))
    errors = [f for f in findings if f.severity == "error"]
    if distribution.agree(devices.strategy, bool(errors) and config.preflight == "strict"):
        raise UserError(f"The doctor found {len(errors)} error(s) (listed above); nothing was trained. Fix "
                        "them, or pass --config.preflight=warn to train anyway.")
    return findings, audit_stats


def load_weights(launch: Launch, devices: Devices, prep: Prepared, log):
    """(model, loaded_from): the weights, the vocabulary matched to the tokenizer. Before
    open_outputs, so an unreadable checkpoint leaves no config.json that would refuse the
    relaunch with another --config.model.name_or_path as "other settings"."""
    import tensorflow as tf

    with devices.strategy.scope():
        tf.keras.utils.set_random_seed(launch.config.seed)
        model, loaded_from = model_lib.load_model(launch.config.model.name_or_path, log)
        model_lib.match_vocabulary(model, prep.tokenizer, log)
    return model, loaded_from


def open_outputs(launch: Launch, prep: Prepared, findings: list, audit_stats: dict) -> Outputs:
    """From here on the chief writes; config.json of the first launch is the run's identity.
    The other workers write only their checkpoints, to a local folder removed at the end."""
    config, run_dir = launch.config, launch.run_dir
    layout = ckpt_lib.Layout.of(config.output_dir)
    if launch.chief:
        filesystem.makedirs(config.output_dir)
        filesystem.remove_stale(config.output_dir)
        if not run_dir.stored:
            run_dir.write_config(config.to_dict(), prep.resolved, prep.plan, prep.fingerprint, prep.data_stats,
                                 layout)
        if findings:
            diagnosis.write_outputs(findings, audit_stats, config.output_dir)
    return Outputs(layout, distribution.worker_dir(config.output_dir, launch.cluster), findings)


def build(launch: Launch, devices: Devices, prep: Prepared, outputs: Outputs, model, loaded_from, log) -> Built:
    """The learning rate when it is `auto`, the optimizer with its slots, the compiled steps
    and the validation batches."""
    config, strategy = launch.config, devices.strategy
    log(distribution.describe_batch(strategy, config.train.batch_size, config.data.block_size))
    # The token that ends a packed document when documents attend only to themselves, or None.
    eos = settings.document_eos_id(config.data, prep.tokenizer.eos_token_id)
    plan, resolved, lr_auto = _learning_rate(launch, devices, prep, outputs, model, eos, log)
    with strategy.scope():
        schedule = optimization.make_schedule(plan, config.optim)
        optimizer = optimization.make_optimizer(plan, config.optim, schedule,
                                                loss_scaling=distribution.uses_loss_scaling(devices.precision))
        # Slots exist before a restore, so it fills them at once (no deferred restore,
        # no "value in checkpoint could not be found" warnings when nothing trains).
        optimizer.build(model.trainable_variables)
    train_loop = steps_lib.make_train_loop(model, optimizer, strategy, config.train.grad_accum_steps,
                                           config.optim.max_grad_norm, config.runtime.xla, eos)
    eval_step = steps_lib.make_eval_step(model, strategy, eos)
    eval_batch = config.eval.batch_size or config.train.batch_size
    # Read once and kept: the validation rows are capped (data.validation_max_examples),
    # and a new tf.data iterator at each of ~20 evaluations cost ~40 ms of a ~240 ms
    # pass on the sample's model.
    val_data = list(data_lib.distributed_eval_data(strategy, prep.val_blocks, eval_batch,
                                                   prep.tokenizer.pad_token_id))
    return Built(model, loaded_from, optimizer, train_loop, eval_step, val_data, plan, resolved, lr_auto, schedule)


def _learning_rate(launch: Launch, devices: Devices, prep: Prepared, outputs: Outputs, model, document_eos_id,
                   log):
    """(plan, resolved config, range test or None). When the plan says so
    (optim.learning_rate=auto, or derived on a pretrained model under wsd), a short range
    test picks the peak rate, once per run (its pick is in config.json from then on; a
    launch killed during the test runs it again)."""
    config, plan, resolved = launch.config, prep.plan, prep.resolved
    lr_auto = (launch.run_dir.stored or {}).get("lr_auto")
    if not (plan.range_test or config.optim.learning_rate == "auto"):  # "auto" in a plan stored before range_test
        return plan, resolved, lr_auto
    if lr_auto is None:
        with launch.timings.part("lr_auto"):
            lr_auto = lr_range.auto_learning_rate(model, devices.strategy, prep.train_source, plan, config, log,
                                                  document_eos_id,
                                                  loss_scaling=distribution.uses_loss_scaling(devices.precision))
        if launch.chief:
            picked = lr_auto["learning_rate"]
            launch.run_dir.write_config(
                config.to_dict(), {**resolved, "optim": {**resolved["optim"], "learning_rate": picked}},
                dataclasses.replace(plan, learning_rate=picked), prep.fingerprint, prep.data_stats,
                outputs.layout, lr_auto)
    plan = dataclasses.replace(plan, learning_rate=lr_auto["learning_rate"])
    resolved["optim"]["learning_rate"] = plan.learning_rate
    return plan, resolved, lr_auto
