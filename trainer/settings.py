"""Settings: every field of configs/default.py checked before anything is read or written.

One rule per schema key (a test fails when a key has none), so a bad value
ends with a message that names the flag and a valid value, exit status 2,
and an untouched output directory -- never a ZeroDivisionError ten minutes in.
Values that depend on the data (warm-up against the total steps, batch against
the rows) are checked where the plan is made (trainer/training/optimization.py).
"""

import math

import ml_collections

from trainer import filesystem, vertex
from trainer.errors import UserError

# The values a choice key may take. They live here, with the rules, because the schema
# owns their meaning and every layer reads them: training/distribution.py builds the
# strategies and precisions, training/optimization.py the schedules, data/read.py applies
# the normalisations, evaluation/metrics.py computes the metrics.
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
SCHEDULES = ("linear", "cosine", "inverse_sqrt", "constant", "wsd")
# data.normalize steps, applied in this order. Off by default: a model fine-tuned on
# normalised text writes normalised text, which is a choice, not a fix.
NORMALIZATIONS = ("control", "nfkc", "whitespace", "lowercase")
# Task metrics of prompt/completion data (trainer/evaluation/metrics.py), all "higher is better".
TASK_METRICS = ("exact_match", "token_f1", "bleu", "rouge_l")

# Paths a user may write with `~`: expanded once, here, for every reader.
PATH_KEYS = ("output_dir", "data.prepared_dir", "model.name_or_path", "model.tokenizer")


def _int(low=None, high=None, optional=False):
    def check(v):
        if v is None:
            return optional
        return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low) and \
            (high is None or v <= high)
    return check


def _number(low=None, high=None, low_open=False, high_open=False, optional=False):
    def check(v):
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)
    return check


def _choice(*options):
    return lambda v: v in options


def _text(allow_empty=False):
    return lambda v: isinstance(v, str) and (allow_empty or bool(v.strip()))


def _normalize_steps(v):
    return isinstance(v, str) and all(s.strip().lower() in NORMALIZATIONS for s in v.split(",") if s.strip())


def _text_separator(v):
    """blank_line, line, "" (the old spelling of line) or a literal separator. Not another
    lowercase word: a misspelt mode ("blank_lines") would be a separator found inside words."""
    return isinstance(v, str) and (v in ("blank_line", "line", "") or
                                   not (v.isascii() and v.replace("_", "").isalpha() and v.islower()))


def _prompts(v):
    return isinstance(v, (tuple, list)) and all(isinstance(p, str) for p in v)


# key -> (check, what a valid value is)
RULES = {
    "output_dir": (_text(), "a folder path, e.g. runs/my-run"),
    "seed": (_int(0), "a whole number >= 0"),
    "preflight": (_choice("strict", "warn", "off"), "strict, warn or off"),
    "export_serving": (lambda v: isinstance(v, bool), "true or false"),
    "data.train_files": (_text(), "one or more files or globs, e.g. data/train.jsonl"),
    "data.validation_files": (_text(allow_empty=True), "files or globs, or empty"),
    "data.validation_fraction": (_number(0, 1, low_open=True, high_open=True), "between 0 and 1, e.g. 0.1"),
    "data.validation_max_examples": (_int(1), "at least 1"),
    "data.test_files": (_text(allow_empty=True), "files or globs, or empty"),
    "data.test_fraction": (_number(0, 1, high_open=True), "from 0 (no test split) to below 1, e.g. 0.05"),
    "data.text_field": (_text(), "the JSON field or column that holds the text, e.g. text"),
    "data.prompt_field": (lambda v: isinstance(v, str), 'the JSON field or column of the prompts, or ""'),
    "data.completion_field": (lambda v: isinstance(v, str), 'the JSON field or column of the completions, or ""'),
    "data.text_separator": (_text_separator, 'blank_line (documents separated by blank lines), line (one '
                            'document per line; "" says the same) or a literal separator such as "\\n\\n\\n" or '
                            '"<|endoftext|>", not a lowercase word'),
    "data.normalize": (_normalize_steps, '"" or a comma-separated subset of control,nfkc,whitespace,lowercase'),
    "data.block_size": (_int(2), "at least 2 tokens, e.g. 512"),
    "data.batching": (_choice("auto", "packed", "padded"), "auto, packed or padded"),
    "data.packed_attention": (_choice("row", "document"), "row or document"),
    "data.num_proc": (_int(1), "at least 1"),
    "data.cache_dir": (_text(allow_empty=True), '"auto", a local or gs:// folder, or "" for no token cache'),
    "data.prepared_dir": (_text(allow_empty=True), "a folder written by python -m trainer.prepare, or empty"),
    "model.name_or_path": (_text(), "a model folder or hub name, e.g. distilgpt2"),
    "model.tokenizer": (_text(allow_empty=True), "a tokenizer folder or hub name, or empty"),
    "model.add_tokens": (_text(allow_empty=True), 'a UTF-8 file with one new token per line, or ""'),
    "model.bootstrap_tiny": (lambda v: isinstance(v, bool), "true or false"),
    "model.tiny.n_layer": (_int(1), "at least 1"),
    "model.tiny.n_embd": (_int(1), "at least 1 and a multiple of model.tiny.n_head"),
    "model.tiny.n_head": (_int(1), "at least 1"),
    "model.tiny.n_positions": (_int(2), "at least 2"),
    "model.tiny.vocab_size": (_int(257), "at least 257 (the 256 bytes and EOS)"),
    "model.tiny.dropout": (_number(0, 1, high_open=True), "in [0, 1), e.g. 0.1"),
    "optim.learning_rate": (lambda v: v == "auto" or _number(0, low_open=True, optional=True)(v),
                            "positive (e.g. 1e-4), auto (a short range test), or unset to derive it from "
                            "the model and batch size"),
    "optim.schedule": (_choice("auto", *SCHEDULES), "auto, " + ", ".join(SCHEDULES)),
    "optim.warmup_steps": (_int(0, optional=True), "0 or more, or unset to use warmup_ratio"),
    "optim.warmup_ratio": (_number(0, 1, high_open=True), "in [0, 1), e.g. 0.06"),
    "optim.final_lr_ratio": (_number(0, 1), "in [0, 1], e.g. 0.1"),
    "optim.decay_ratio": (_number(0, 1, low_open=True), "in (0, 1], e.g. 0.2"),
    "optim.weight_averaging": (_choice("none", "ema"), "none or ema"),
    "optim.weight_decay": (_number(0), "0 or more, e.g. 0.01"),
    "optim.beta_1": (_number(0, 1, high_open=True), "in [0, 1), e.g. 0.9"),
    "optim.beta_2": (_number(0, 1, high_open=True), "in [0, 1), e.g. 0.999"),
    "optim.epsilon": (_number(0, low_open=True), "positive, e.g. 1e-8"),
    "optim.max_grad_norm": (_number(0), "0 (no clipping) or more, e.g. 1.0"),
    "train.batch_size": (_int(1), "at least 1"),
    "train.grad_accum_steps": (_int(1), "at least 1"),
    "train.epochs": (_int(1, optional=True), "at least 1, or unset to derive it"),
    "train.max_steps": (_int(0), "0 (no cap) or more"),
    "train.eval_every_steps": (_int(1, optional=True), "at least 1, or unset to derive it"),
    "train.early_stopping_patience": (_int(0, optional=True), "0 (never stop early) or more, or None (derived)"),
    "train.early_stopping_min_delta": (_number(0), "0 or more nats"),
    "train.select_best_by": (_choice("auto", "loss", *TASK_METRICS), "auto, loss, " + ", ".join(TASK_METRICS)),
    "train.checkpoint_every_steps": (_int(1, optional=True), "at least 1, or unset (at every evaluation)"),
    "train.keep_checkpoints": (_int(1), "at least 1 (the latest state is what a resume needs)"),
    "train.log_every_steps": (_int(1), "at least 1, e.g. 10"),
    "eval.batch_size": (_int(1, optional=True), "at least 1, or unset to use train.batch_size"),
    "eval.prompts": (_prompts, "a list of strings"),
    "eval.num_prompts": (_int(0), "0 or more"),
    "eval.max_new_tokens": (_int(1), "at least 1"),
    "eval.task_examples": (_int(0), "0 (no task metrics) or more, e.g. 64"),
    "eval.task_max_new_tokens": (_int(1, optional=True), "at least 1, or unset (the longest reference)"),
    "eval.review_examples": (_int(0), "0 (no review sheet) or more, e.g. 24"),
    "runtime.strategy": (_choice(*STRATEGIES), ", ".join(STRATEGIES)),
    "runtime.cpu_devices": (_int(1, 64), "from 1 to 64"),
    "runtime.precision": (_choice(*PRECISIONS), ", ".join(PRECISIONS)),
    "runtime.xla": (lambda v: isinstance(v, bool), "true or false"),
    "runtime.steps_per_execution": (_int(1, optional=True), "at least 1, or unset to size it by step time"),
    "runtime.tpu": (lambda v: isinstance(v, str), "a TPU name or grpc:// address, or empty"),
}


def flatten(node, prefix: str = "") -> dict:
    """{'train.batch_size': 16, ...} from a ConfigDict or a nested dict."""
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unknown_key_message(argv) -> str:
    """Name the override that is not in the schema, and the nearest real keys."""
    import difflib
    import importlib.util

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    spec = importlib.util.spec_from_file_location("_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = list(flatten(module.get_config()))
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config."):].split("=", 1)[0]
            if key not in known:
                # Same field name in another section first (train.learning_rate -> optim.learning_rate).
                near = [k for k in known if k.endswith("." + key.rsplit(".", 1)[-1])] or \
                    difflib.get_close_matches(key, known, n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join('--config.' + k for k in near)}?" if near else ""
                return f"--config.{key} is not a config key (see configs/default.py).{hint}"
    return "a --config override names a key that configs/default.py does not define."


def check(config) -> None:
    """Raise UserError for the first field outside its rule, naming the flag."""
    values = flatten(config)
    for key, value in values.items():
        rule = RULES.get(key)
        if rule is None:
            raise UserError(f"--config.{key} has no validation rule (trainer/settings.py): a schema field "
                            "was added without one.")
        ok, valid = rule
        if not ok(value):
            raise UserError(f"--config.{key}={value!r} is not valid: use {valid}.")
    t = config.train
    if t.batch_size % t.grad_accum_steps:
        raise UserError(f"--config.train.batch_size={t.batch_size} must be a multiple of "
                        f"--config.train.grad_accum_steps={t.grad_accum_steps}.")
    d = config.data
    if bool(d.prompt_field) != bool(d.completion_field):
        given, missing = ("prompt_field", "completion_field") if d.prompt_field else ("completion_field", "prompt_field")
        raise UserError(f"--config.data.{given} is set but --config.data.{missing} is not: prompt/completion "
                        "data needs both (e.g. --config.data.prompt_field=prompt "
                        "--config.data.completion_field=completion), free text neither.")
    if config.train.select_best_by not in ("auto", "loss") and not d.prompt_field:
        raise UserError(f"--config.train.select_best_by={config.train.select_best_by} scores completions of "
                        "prompt/completion data: set --config.data.prompt_field and "
                        "--config.data.completion_field, or use --config.train.select_best_by=loss.")
    if config.train.select_best_by not in ("auto", "loss") and config.eval.task_examples == 0:
        raise UserError(f"--config.train.select_best_by={config.train.select_best_by} needs task metrics: "
                        "set --config.eval.task_examples above 0 (e.g. 64).")
    tiny = config.model.tiny
    if config.model.bootstrap_tiny and tiny.n_embd % tiny.n_head:
        raise UserError(f"--config.model.tiny.n_embd={tiny.n_embd} must be a multiple of "
                        f"--config.model.tiny.n_head={tiny.n_head}.")


def override(config, overrides: dict) -> None:
    """Set dotted keys in place, as --config.KEY=VALUE does: {"train.epochs": 2, "model.tiny.n_layer": 1}."""
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        node = config
        for part in filter(None, section.split(".")):
            node = node[part]
        node[name] = value


# data.cache_dir="auto" on a local output_dir.
AUTO_CACHE = "~/.cache/tunewell"


def resolve(config):
    """A checked copy of `config` with every path expanded (`~`, $VARS)."""
    check(config)
    resolved = ml_collections.ConfigDict(config.to_dict())
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        node = resolved[section] if section else resolved
        node[name] = filesystem.expand(node[name])
    resolved.data.batching = batching_of(resolved.data)
    resolved.train.select_best_by = select_by_of(resolved)
    resolved.optim.schedule = schedule_of(resolved)
    if resolved.optim.weight_averaging != "none" and resolved.train.select_best_by != "loss":
        raise UserError(
            f"--config.optim.weight_averaging={resolved.optim.weight_averaging} compares the averaged weights "
            f"with the weights by validation loss, but train.select_best_by is "
            f"{resolved.train.select_best_by}" + (" (auto, for prompt/completion data)"
                                                  if config.train.select_best_by == "auto" else "")
            + ". Use --config.train.select_best_by=loss, or --config.optim.weight_averaging=none.")
    vertex_outputs = vertex.output_locations()
    if vertex_outputs and not filesystem.is_remote(resolved.output_dir):
        # On Vertex a local folder dies with the job's VM: the job's baseOutputDirectory it is.
        resolved.output_dir = vertex_outputs["base"]
    if resolved.data.cache_dir == "auto":
        # Beside the run on gs://, which every worker and every restart of a cloud job
        # reaches (a VM's disk dies with the VM); else this machine's cache, shared by its runs.
        resolved.data.cache_dir = (filesystem.join(resolved.output_dir, "token-cache")
                                   if filesystem.is_remote(resolved.output_dir) else filesystem.expand(AUTO_CACHE))
    resolved.lock()
    return resolved


def is_prompt_completion(data_config) -> bool:
    """Prompt/completion data: both fields named (configs/default.py, data.prompt_field)."""
    return bool(data_config.prompt_field and data_config.completion_field)


def select_by_of(config) -> str:
    """train.select_best_by with "auto" decided: token_f1 for prompt/completion data scored
    by task metrics, the loss otherwise (configs/default.py says why)."""
    if config.train.select_best_by != "auto":
        return config.train.select_best_by
    return "token_f1" if is_prompt_completion(config.data) and config.eval.task_examples else "loss"


def schedule_of(config) -> str:
    """optim.schedule with "auto" decided: wsd when the validation loss selects (a loss over
    thousands of tokens says reliably when it stops improving, which is what starts wsd's
    decay), linear over the derived epochs when a task metric selects (a metric on 64 prompts
    plateaus before it climbs, so its pauses would start the decay too soon)."""
    if config.optim.schedule != "auto":
        return config.optim.schedule
    return "wsd" if select_by_of(config) == "loss" else "linear"


def document_eos_id(data_config, eos_token_id: int) -> int | None:
    """The token that ends a document when packed documents attend only to themselves
    (data.packed_attention=document on packed rows), else None (the whole row)."""
    if data_config.packed_attention == "document" and batching_of(data_config) == "packed":
        return eos_token_id
    return None


def batching_of(data_config) -> str:
    """data.batching with "auto" decided: packed for free text, padded for prompt/completion
    data, where an example alone in its row, from position 0 as at inference, learnt the
    task far better than packed ones (README "Fine-tune for a task": exact match 56 against 0
    on the task sample at the same examples seen)."""
    if data_config.batching != "auto":
        return data_config.batching
    return "padded" if is_prompt_completion(data_config) else "packed"
