"""Pre-flight: say why a fine-tune will fail before any compute is spent.

Runs the data audit (trainer/diagnosis/audit/), checks the settings against the
data and the model, and the labels the trainer will feed. `python -m
trainer.doctor` runs it alone; trainer.task runs it as a pre-flight
(--config.preflight=strict|warn|off); trainer.prepare beside the shards. Writes
OUTPUT/doctor.json and OUTPUT/doctor.md.
"""

import dataclasses
import json

import ml_collections
import numpy as np

from trainer import data as data_lib
from trainer import filesystem
from trainer import model as model_lib
from trainer.data import IGNORE_INDEX, keys, parse_normalize
from trainer.diagnosis import audit
from trainer.diagnosis.audit import Finding
from trainer.training import optimization
from trainer.training import steps as steps_lib

# OpenAI's fine-tuning guidance keeps examples x epochs between 100 and 25,000
# (fewer: nothing is learnt; more: the examples are memorised).
EXAMPLE_EPOCHS_RANGE = (100, 25_000)
# Below ~50 optimizer steps, warm-up and decay have no room and evaluations are few.
MIN_TOTAL_STEPS = 50
# Learning rate against the derived one: 10x above diverges or forgets the pre-training,
# 100x below moves nothing within a fine-tuning budget.
LR_HIGH_WARNING, LR_HIGH_ERROR, LR_LOW_WARNING, LR_LOW_ERROR = 3.0, 10.0, 1 / 30, 1 / 1000


# Text the data audit reads: all of it up to this, else a uniform sample chosen by each
# document's seeded key (data/keys.py: key < 2**64 x budget / text bytes). The audit's
# time and memory grow with the words it reads (~20 s per 100,000 documents of ~65
# words, ~40 MB, on one core: README "Doctor"; ~2.3 GB of memory for 100,000 documents
# of ~310 words, bench/prepare.md), so a budget in bytes keeps both flat on any corpus:
# a multi-worker run's chief audits while the other workers wait in a collective, and
# a linear audit of 9M documents outlasted its 30-minute timeout. Copies of a document
# share a key and are sampled together, so the sample's exact-duplicate rate is the
# corpus's; near duplicates and leakage are estimated on it.
AUDIT_TEXT_BYTES = 40 * 2**20


def text_bytes(document) -> int:
    """UTF-8 bytes of a text or of a (prompt, completion) pair."""
    if isinstance(document, tuple):
        return sum(len(part.encode("utf-8", "surrogatepass")) for part in document)
    return len(document.encode("utf-8", "surrogatepass"))


def audit_bound(total_bytes: int, budget: int | None = None) -> int:
    """Documents whose keys are below this are audited: all of them when their text fits
    the budget (AUDIT_TEXT_BYTES), else a uniform sample of about that much text."""
    budget = AUDIT_TEXT_BYTES if budget is None else budget
    return int(2**keys.KEY_BITS * min(1.0, budget / max(total_bytes, 1)))


def sample_finding(sampled: int, documents: int) -> Finding:
    return Finding(
        "size", "info", f"audited a uniform sample of {sampled:,} of {documents:,} training documents",
        "The corpus checks read a sample chosen by each document's key, so they take the same time on any "
        "corpus; copies of a document are sampled together, so the exact-duplicate rate is the corpus's. "
        "Counts and lengths are of every document.", "no change needed",
        {"sampled": sampled, "documents": documents})


def prepared_findings(folder: str) -> list[Finding]:
    """The data and label findings trainer.prepare wrote beside its shards (it read the
    documents; it checks no settings), so the run's doctor files hold them too."""
    path = filesystem.join(folder, "doctor.json")
    if not filesystem.exists(path):
        return []
    return [Finding(**f) for f in filesystem.read_json(path)["findings"]]


def settings_findings(config, plan, train_documents: int, n_embd: int, n_params: int, train_tokens: int,
                      replicas: int = 1) -> list[Finding]:
    found = []
    derived = optimization.derived_learning_rate(n_embd, plan.tokens_per_step, config.model.bootstrap_tiny)
    ratio = plan.learning_rate / derived
    band = f"{derived * LR_LOW_WARNING:.1g}-{derived * LR_HIGH_WARNING:.1g}"
    data = {"learning_rate": plan.learning_rate, "derived_learning_rate": derived, "ratio": ratio}
    if ratio >= LR_HIGH_WARNING:
        found.append(Finding(
            "settings", "error" if ratio >= LR_HIGH_ERROR else "warning",
            f"learning rate {plan.learning_rate:.2g} is {ratio:.0f}x the {derived:.2g} that fits a {n_embd}-wide "
            f"model at {plan.tokens_per_step:,} tokens/step (sensible band {band})",
            "Too large a step destroys what the pre-trained model knows and makes the loss spike or diverge.",
            f"--config.optim.learning_rate={derived:.2g} (or leave it unset)", data))
    elif ratio <= LR_LOW_WARNING:
        found.append(Finding(
            "settings", "error" if ratio <= LR_LOW_ERROR else "warning",
            f"learning rate {plan.learning_rate:.2g} is 1/{1 / ratio:.0f} of the {derived:.2g} that fits this "
            f"model and batch (sensible band {band})",
            "With steps this small the weights barely move: the loss stays flat and the run is wasted.",
            f"--config.optim.learning_rate={derived:.2g} (or leave it unset)", data))
    if plan.warmup_steps == 0:
        found.append(Finding(
            "settings", "warning", "no warm-up (optim.warmup_steps=0)",
            "Adam's first steps use unreliable moment estimates; at full learning rate they can wreck "
            "pre-trained weights in the first few updates.",
            f"--config.optim.warmup_steps={max(1, round(0.06 * plan.total_steps))}", {}))
    example_epochs = train_documents * plan.epochs
    low, high = EXAMPLE_EPOCHS_RANGE
    epochs_derived = "train.epochs" in plan.derived
    if example_epochs < low:
        # Too few presentations: more epochs help only up to a point; more data always does.
        more = -(-low // max(train_documents, 1))
        found.append(Finding(
            "settings", "warning",
            f"examples x epochs = {train_documents:,} x {plan.epochs} = {example_epochs:,}, under {low:,}",
            "Too few example presentations teach little (OpenAI's fine-tuning heuristic).",
            "more training data" + (f", or --config.train.epochs={more}"
                                    if more > plan.epochs and not epochs_derived else ""),
            {"example_epochs": example_epochs}))
    elif example_epochs > high and plan.epochs > optimization.DEFAULT_EPOCHS and not epochs_derived:
        # Only MORE passes than the usual 3, set by hand, over a corpus this size: a
        # large corpus at 1-3 epochs is ordinary (and is what the derived rule picks).
        better = max(1, min(optimization.DEFAULT_EPOCHS, high // max(train_documents, 1)))
        found.append(Finding(
            "settings", "warning",
            f"examples x epochs = {train_documents:,} x {plan.epochs} = {example_epochs:,}, over {high:,}",
            "Many passes over the same examples make the model recite them (OpenAI's fine-tuning "
            "heuristic); validation and early stopping limit the damage but waste the extra epochs.",
            f"--config.train.epochs={better} (or leave it unset)", {"example_epochs": example_epochs}))
    if plan.total_steps < MIN_TOTAL_STEPS:
        found.append(Finding(
            "settings", "warning", f"only {plan.total_steps} optimizer steps in the whole run",
            "Warm-up, decay and early stopping need room; so few updates rarely move a model far.",
            (f"--config.train.batch_size={config.train.batch_size // 2} or " if config.train.batch_size > 1
             else "") + "more epochs or data",
            {"total_steps": plan.total_steps}))
    if config.train.batch_size % replicas:
        found.append(Finding(
            "settings", "error", f"global batch {config.train.batch_size} does not divide over {replicas} replicas",
            "Each replica must get the same number of rows.",
            f"--config.train.batch_size={replicas * max(1, config.train.batch_size // replicas)}", {}))
    tokens_per_param = train_tokens / max(n_params, 1)
    found.append(Finding(
        "size", "warning" if train_tokens < 10_000 else "info",
        f"{train_tokens:,} training tokens for {n_params:,} parameters ({tokens_per_param:.3g} tokens per "
        f"parameter); {plan.steps_per_epoch} steps per epoch at batch {config.train.batch_size}",
        "Very small corpora are memorised within a few epochs; validation and early stopping catch it.",
        "more data if the diagnosis says overfit", {"tokens_per_parameter": tokens_per_param,
                                                    "steps_per_epoch": plan.steps_per_epoch}))
    return found


def label_findings(blocks, eos_token_id: int) -> list[Finding]:
    """The labels the loss will see: padding never scored, EOS scored, not pre-shifted."""
    found = []
    ids, mask, labels = blocks.input_ids, blocks.attention_mask, blocks.labels
    supervised = labels != IGNORE_INDEX
    padding_scored = int(np.sum(supervised & (mask == 0)))
    if padding_scored:
        found.append(Finding(
            "labels", "error", f"{padding_scored:,} padding positions carry labels",
            "The model is trained to predict padding: it learns to emit endless EOS/pad tokens.",
            "labels must be -100 wherever attention_mask is 0", {"padding_scored": padding_scored}))
    real_eos = (ids == eos_token_id) & (mask == 1)
    eos_masked = int(np.sum(real_eos & ~supervised))
    examples = blocks.prompt_lengths is not None  # prompt/completion: an empty prompt IS an (unscored) EOS
    if real_eos.any() and eos_masked and not examples:
        found.append(Finding(
            "labels", "error",
            f"{eos_masked:,} of {int(real_eos.sum()):,} real EOS tokens are masked out of the loss",
            "When the pad id is the EOS id, masking by id also hides every real EOS: the model never "
            "learns to stop and rambles to max length.",
            "mask padding by position (attention_mask), not by token id", {"eos_masked": eos_masked}))
    if not real_eos.any():
        found.append(Finding(
            "labels", "warning", "no EOS token in the training rows",
            "Without EOS the model never learns where a document ends.",
            "append EOS to every document (the trainer does; check custom data)", {}))
    rows = supervised[:, 1:].any(axis=1)
    if rows.any():
        sup = supervised[:, :-1] & supervised[:, 1:]
        shifted = np.mean(labels[:, :-1][sup] == ids[:, 1:][sup]) if sup.any() else 0.0
        same = np.mean(labels[supervised] == ids[supervised])
        if shifted > 0.9 and same < 0.5:
            found.append(Finding(
                "labels", "error", f"labels equal the NEXT input token at {shifted:.0%} of positions",
                "The model shifts labels itself; shifting them in the data too trains it to predict two "
                "tokens ahead.", "use labels = input_ids (the loss shifts once)", {"shifted_share": shifted}))
    share = float(supervised[:, 1:].sum() / max(supervised[:, 1:].size, 1))
    found.append(Finding("labels", "info", f"{share:.1%} of label positions are supervised",
                         "Only completion tokens and their EOS are scored; prompts and padding are not." if examples
                         else "Packed rows supervise every position; padded rows only the real tokens.",
                         "no change needed" if examples else "--config.data.batching=packed wastes nothing on padding",
                         {"supervised_share": share}))
    return found


def run_checks(config, prep, n_params: int, replicas: int = 1) -> tuple[list[Finding], dict]:
    """Data audit + settings + labels, errors first.

    Prepared data (prep.train_blocks is None) was audited by trainer.prepare,
    which read the documents (PREPARED_DIR/doctor.md); here only the settings
    are checked against it."""
    config = prep.config  # checked and resolved (data.batching auto -> packed or padded)
    tokenizer = prep.tokenizer
    if prep.train_blocks is None:
        findings = prepared_findings(config.data.prepared_dir)
        findings += settings_findings(config, prep.plan, prep.data_stats["train"]["documents"],
                                      prep.model_config.n_embd, n_params, prep.data_stats["train"]["tokens"],
                                      replicas)
        findings.sort(key=lambda f: audit.SEVERITIES.index(f.severity))
        return findings, {}

    def tokenize(texts):
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    # Lengths from the trainer's own tokenization: the corpus is not tokenized a second time.
    blocks = prep.train_blocks
    train, lengths = prep.documents.train, blocks.document_lengths
    pairs = prep.documents.train_pairs
    prompt_lengths = blocks.prompt_lengths
    sampled = None
    total_bytes = sum(text_bytes(d) for d in train)
    if total_bytes > AUDIT_TEXT_BYTES:  # a key sample, chosen as trainer.prepare chooses its own
        bound = audit_bound(total_bytes)
        chosen = [i for i, d in enumerate(pairs or train) if keys.document_key(d, config.seed) < bound]
        train, lengths = [train[i] for i in chosen], lengths[chosen]
        pairs = [pairs[i] for i in chosen] if pairs else pairs
        prompt_lengths = prompt_lengths[chosen] if prompt_lengths is not None else None
        sampled = len(chosen)
    prompt_completion = None if prompt_lengths is None else {
        "pairs": pairs, "prompt_tokens": prompt_lengths.tolist(),
        "completion_tokens": (lengths - prompt_lengths).tolist()}
    findings, stats = audit.audit_corpus(
        train, prep.documents.validation, lengths.tolist(), config.data.block_size, config.data.batching,
        tokenize=tokenize, n_positions=prep.model_config.n_positions, vocab_size=len(tokenizer),
        seed=config.seed, normalized=parse_normalize(config.data.normalize), prompt_completion=prompt_completion,
        text_separator=config.data.text_separator)
    if sampled is not None:
        findings.append(sample_finding(sampled, len(prep.documents.train)))
    findings += settings_findings(config, prep.plan, len(prep.documents.train), prep.model_config.n_embd,
                                  n_params, prep.train_blocks.tokens, replicas)
    findings += label_findings(prep.train_blocks, tokenizer.eos_token_id)
    findings.sort(key=lambda f: audit.SEVERITIES.index(f.severity))
    return findings, stats


def estimate_parameters(model_config) -> int:
    """GPT-2 parameter count from its config, without building the model:
    embeddings V*d + P*d, 12*d^2 + 13*d per layer, final LayerNorm 2*d."""
    d, layers = model_config.n_embd, model_config.n_layer
    return int(model_config.vocab_size * d + model_config.n_positions * d + layers * (12 * d * d + 13 * d) + 2 * d)


def overfit_one_batch(config, prep, steps: int = 100, log=print) -> Finding:
    """Train on one batch only: a correctly wired model drives its loss near zero.

    One batch tolerates a larger step than a corpus: 3x the run's learning rate,
    held constant after a 5-step warm-up. Passing means the loss fell below 30%
    of its start (e.g. 5.7 -> under 1.7 nats)."""
    import tensorflow as tf

    model, _ = model_lib.load_model(config.model.name_or_path, log=lambda m: None)
    model_lib.match_vocabulary(model, prep.tokenizer, log=lambda m: None)  # model.add_tokens' rows
    plan = dataclasses.replace(prep.plan, warmup_steps=5, total_steps=steps,
                               learning_rate=3 * prep.plan.learning_rate)
    optim = ml_collections.ConfigDict(config.optim.to_dict())
    optim.schedule = "constant"
    optimizer = optimization.make_optimizer(plan, optim)
    step = steps_lib.make_train_step(model, optimizer, tf.distribute.get_strategy(), 1, 1.0)
    batch = next(iter(data_lib.train_dataset(prep.train_blocks, min(config.train.batch_size, prep.train_blocks.rows),
                                             1, 1, 0, config.seed)))
    losses = []
    for _ in range(steps):
        out = step(batch)
        losses.append(float(out["loss_sum"]) / max(float(out["count"]), 1.0))
    ok = losses[-1] < 0.3 * losses[0]
    log(f"Overfit-one-batch: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps.")
    return Finding("overfit_batch", "info" if ok else "error",
                   f"one batch trained {steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}",
                   "A model that cannot memorise a single batch is wired wrong (labels, masks, frozen "
                   "weights) or has a learning rate far too low.",
                   "no change needed" if ok else "check labels/masks; raise --config.optim.learning_rate",
                   {"first_loss": losses[0], "last_loss": losses[-1]})


# ----------------------------------------------------------------------------- output


def terminal_summary(findings: list[Finding]) -> str:
    marks = {"error": "ERROR", "warning": "WARN ", "info": "info "}
    lines = [f"Doctor: {sum(f.severity == 'error' for f in findings)} error(s), "
             f"{sum(f.severity == 'warning' for f in findings)} warning(s)."]
    for f in findings:
        lines.append(f"  {marks[f.severity]} [{f.check}] {f.figure}")
        if f.severity != "info":
            lines.append(f"        why: {f.why}\n        fix: {f.fix}")
    return "\n".join(lines)


def markdown(findings: list[Finding]) -> str:
    rows = ["| severity | check | figure | why | fix |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {f.severity} | {f.check} | {f.figure} | {f.why} | {f.fix} |" for f in findings]
    return "# Doctor\n\n" + "\n".join(rows) + "\n"


def write_outputs(findings: list[Finding], stats: dict, directory: str) -> None:
    filesystem.write_json(filesystem.join(directory, "doctor.json"),
                          {"findings": [dataclasses.asdict(f) for f in findings], "stats": _jsonable(stats)})
    filesystem.write_text(filesystem.join(directory, "doctor.md"), markdown(findings))


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
