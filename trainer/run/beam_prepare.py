"""trainer.prepare's pipeline on Apache Beam: files -> documents -> split -> tokens -> rows
-> shards, plus the data audit, on the DirectRunner (processes of this machine) or on
Dataflow (many machines), with the same code.

    files --read (one file per element, streamed record by record; data.read)
          --normalise, key (data.keys.document_key)
          --test: the keys above a fixed threshold (data.keys.test_threshold), set aside first
          --split: validation = the smallest keys (a bounded Top combiner, any runner)
          --tokenize in batches on every worker (data.tokens.encode_batch)
          --group by packing group (data.keys.group_of) -> rows per group (data.blocks.group_rows)
          --deal row number r to shard r % S (equal row counts), sorted by seeded row key
            inside each shard -> TFRecord files
          --counts, lengths and shard list (combiners) -> RESULTS file the driver reads

Every step calls the plain function the in-process path calls (trainer/run/inputs.py
via data.make_blocks), so the rows are the same multiset whichever path made them
(tests/test_beam_prepare.py). Nothing here holds the corpus: a worker holds one
file's current record, one tokenizing batch, one packing group (about 2**20
tokens) or one shard (about 64 MB) at a time.
"""

import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile

import numpy as np

from trainer import data as data_lib
from trainer import filesystem
from trainer import model as model_lib
from trainer import settings
from trainer.data import keys
from trainer.data import shards as shards_lib
from trainer import diagnosis
from trainer.diagnosis import audit
from trainer.errors import UserError

# The pipeline's answer to the driver, written by the last step and removed once
# the manifest is written.
RESULTS = "pipeline-results.json"

# Marks a UserError raised on a worker: Beam re-raises worker errors wrapped in its
# own exception types, with the message inside; the driver finds it by this mark.
_USER_ERROR_MARK = "tunewell-user-error::"


class _WorkerUserError(Exception):
    pass


def _user_error(message: str) -> Exception:
    return _WorkerUserError(_USER_ERROR_MARK + message + "::end")


def records_of_file(path: str, data_config, pairs: bool, on_worker: bool = True):
    """The documents of one file, streamed record by record, normalised and cleaned by
    the function read_documents / read_examples call per file. on_worker: a UserError
    is marked to cross Beam's worker boundary (see _user_error)."""
    normalize = data_lib.parse_normalize(data_config.normalize)
    try:
        if pairs:
            yield from data_lib.file_examples(path, data_config.prompt_field, data_config.completion_field,
                                              normalize)
        else:
            yield from data_lib.file_documents(path, data_config.text_field, data_config.text_separator,
                                               normalize)
    except UserError as e:
        if not on_worker:
            raise
        raise _user_error(str(e)) from None


def _split(keyed, count, smallest, fraction, max_examples):
    """('train' | 'validation', (key, document)) by the key threshold of data.keys."""
    import apache_beam as beam

    try:
        threshold = keys.validation_threshold(smallest, keys.validation_count(count, fraction, max_examples))
    except UserError as e:
        raise _user_error(str(e)) from None
    key, _ = keyed
    yield beam.pvalue.TaggedOutput("validation" if key <= threshold else "train", keyed)


def item_tokens(item) -> int:
    return len(item[0]) + len(item[1]) if isinstance(item, tuple) else len(item)


def encode_items(documents: list, tokenizer, pairs: bool) -> list:
    """Token ids per text (EOS appended), or (prompt ids, completion ids) per pair: what the
    packing groups hold, on every runner."""
    if pairs:
        return data_lib.encode_examples(documents, tokenizer)
    return [np.asarray(ids, np.int32) for ids in data_lib.encode_batch(documents, tokenizer)]


def pack_group(keyed_items, block_size: int, batching: str, pad_token_id: int, keep_tail: bool):
    """The rows of one packing group, its documents in key order (a seeded shuffle)."""
    items = sorted(keyed_items, key=lambda kv: kv[0])
    return data_lib.group_rows([item for _, item in items], block_size, batching, pad_token_id, keep_tail)


def group_records(blocks, seed: int, split: str, group: int):
    """(index in the group, row key, serialized row) of each row of a packed group."""
    for index in range(blocks.rows):
        yield index, keys.row_key(seed, split, group, index), shards_lib.serialize_row(
            blocks.input_ids[index], blocks.attention_mask[index], blocks.labels[index])


def stats_of(blocks) -> dict:
    stats = blocks.stats()
    stats["lengths"] = collections.Counter(blocks.document_lengths.tolist())
    return stats


def add_stats(a: dict, b: dict) -> dict:
    out = dict(a)
    for name, value in b.items():
        out[name] = out[name] + value if name in out else value
    return out


def _length_summary(lengths: collections.Counter) -> dict:
    """count, mean, p50, p90, max of document lengths from their histogram (exact)."""
    if not lengths:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0}
    values = np.array(sorted(lengths), np.int64)
    counts = np.array([lengths[v] for v in values], np.int64)
    total = int(counts.sum())
    cumulative = np.cumsum(counts)

    def percentile(q):  # numpy's "linear" percentile on the expanded list, from the histogram
        position = q / 100 * (total - 1)
        low, high = int(np.floor(position)), int(np.ceil(position))
        v_low = values[np.searchsorted(cumulative, low + 1)]
        v_high = values[np.searchsorted(cumulative, high + 1)]
        return float(v_low + (v_high - v_low) * (position - low))

    return {"count": total, "mean": float((values * counts).sum() / total), "p50": percentile(50),
            "p90": percentile(90), "max": int(values[-1])}


def pipeline_options(runner: str, direct_num_workers: int, extra: list[str]):
    """Beam options: the DirectRunner in `direct_num_workers` processes of this machine
    (1: in this process), or whatever runner and options `extra` names (Dataflow:
    --project --region --temp_location --sdk_container_image, README "Prepared data")."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = [f"--runner={runner}", *extra]
    if runner == "DirectRunner":
        workers = max(1, direct_num_workers)
        args += [f"--direct_num_workers={workers}",
                 f"--direct_running_mode={'multi_processing' if workers > 1 else 'in_memory'}",
                 # Worker processes log a failing bundle's traceback to this terminal; run()
                 # reports the error itself in one line.
                 "--default_sdk_harness_log_level=CRITICAL"]
    return PipelineOptions(args)


def build(pipeline, config, folder: str, tokenizer_path: str, pad_token_id: int, num_shards: int | None,
          bytes_per_row: int, audit_settings: dict):
    """The graph on `pipeline`; run it with pipeline.run().wait_until_finish()."""
    import apache_beam as beam

    data_config, seed = config.data, config.seed
    pairs = settings.is_prompt_completion(data_config)
    batching = settings.batching_of(data_config)
    block_size = data_config.block_size
    add_tokens = config.model.add_tokens

    class Tokenize(beam.DoFn):
        def setup(self):
            self.tokenizer = model_lib.load_tokenizer(tokenizer_path, add_tokens, log=lambda m: None)

        def process(self, batch):
            for (key, _), item in zip(batch, encode_items([d for _, d in batch], self.tokenizer, pairs)):
                yield key, item

    def read(label, spec, flag):
        files = data_lib.expand_files(spec, flag)
        return (pipeline | f"{label} files" >> beam.Create(files)
                | f"{label} read" >> beam.FlatMap(records_of_file, data_config, pairs)
                | f"{label} key" >> beam.Map(lambda d: (keys.document_key(d, seed), d))
                # A file is one element, read by one worker: spread its documents over all
                # workers before tokenizing (one 10 GB file would otherwise be one worker's job).
                | f"{label} spread" >> beam.Reshuffle())

    train = read("Train", data_config.train_files, "--config.data.train_files")
    # The test split first, as load_documents and local_prepare take it: the rest of the
    # pipeline sees the training files as if its documents were not there.
    test = None
    if data_config.test_files:
        test = read("Test", data_config.test_files, "--config.data.test_files")
    elif data_config.test_fraction > 0:
        threshold = keys.test_threshold(data_config.test_fraction)
        test = train | "Test documents" >> beam.Filter(lambda kv: keys.is_test(kv[0], threshold))
        train = train | "Without test" >> beam.Filter(lambda kv: not keys.is_test(kv[0], threshold))
    # Documents and text of the training files, before any is held out: the split and the
    # audit's sample bound start from them (local_prepare.py counts the same in its first pass).
    count = train | "Count documents" >> beam.combiners.Count.Globally()
    text_total = (train | "Text bytes" >> beam.Map(lambda kv: diagnosis.text_bytes(kv[1]))
                  | "Sum text bytes" >> beam.CombineGlobally(sum))
    if data_config.validation_files:
        validation = read("Validation", data_config.validation_files, "--config.data.validation_files")
    else:
        smallest = (train | "Keys" >> beam.Keys()
                    | "Smallest keys" >> beam.combiners.Top.Smallest(max(1, data_config.validation_max_examples)))
        parts = train | "Split" >> beam.FlatMap(
            _split, beam.pvalue.AsSingleton(count), beam.pvalue.AsSingleton(smallest),
            data_config.validation_fraction, data_config.validation_max_examples).with_outputs("train", "validation")
        train, validation = parts.train, parts.validation

    outputs = {}
    splits = [("train", train), ("validation", validation)] + ([("test", test)] if test is not None else [])
    for split, documents in splits:
        label = split.capitalize()
        keep_tail = split != "train"  # validation and test: every token scored, one group
        tokenized = (documents
                     | f"{label} batches" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
                     | f"{label} tokenize" >> beam.ParDo(Tokenize()))
        total = (tokenized | f"{label} tokens" >> beam.Map(lambda kv: item_tokens(kv[1]))
                 | f"{label} sum tokens" >> beam.CombineGlobally(sum))

        def assign(kv, total_tokens, keep_tail=keep_tail):
            groups = 1 if keep_tail else keys.group_count(total_tokens)
            return keys.group_of(kv[0], groups), kv

        def rows_of_group(group_items, split=split, keep_tail=keep_tail):
            group, items = group_items
            blocks = pack_group(items, block_size, batching, pad_token_id, keep_tail)
            yield beam.pvalue.TaggedOutput("stats", stats_of(blocks))
            yield beam.pvalue.TaggedOutput("rows_per_group", (group, blocks.rows))
            for index, key, record in group_records(blocks, seed, split, group):
                yield (group, index), (key, record)

        made = (tokenized
                | f"{label} assign groups" >> beam.Map(assign, beam.pvalue.AsSingleton(total))
                | f"{label} group" >> beam.GroupByKey()
                | f"{label} rows" >> beam.FlatMap(rows_of_group).with_outputs("stats", "rows_per_group",
                                                                              main="rows"))
        rows = made.rows
        stats = made.stats | f"{label} stats" >> beam.CombineGlobally(
            lambda parts: functools.reduce(add_stats, parts, {}))
        # Each group's first row in the split's row numbering (groups in order): a small
        # table, one entry per group (596 at 2.5B tokens), that every worker gets whole.
        offsets = (made.rows_per_group | f"{label} rows per group" >> beam.combiners.ToList()
                   | f"{label} group offsets" >> beam.Map(_group_offsets))
        row_count = offsets | f"{label} count rows" >> beam.Map(lambda table: table["rows"])

        def shards_of(rows_total, split=split):
            try:
                return shards_for(split, rows_total, num_shards, bytes_per_row)
            except UserError as e:
                raise _user_error(str(e)) from None

        shard_total = row_count | f"{label} shard count" >> beam.Map(shards_of)

        def write_shard(shard_rows, count, split=split):
            index, keyed_records = shard_rows
            # A retried bundle rewrites the file whole.
            return write_shard_file(folder, split, index, count, [record for _, record in sorted(keyed_records)])

        def deal(row, table, count):
            """Row number r goes to shard r % count: every shard gets floor or ceil of rows / count
            (equal row counts); inside its shard a row's place is its seeded row key."""
            (group, index), keyed_record = row
            return (table["offsets"][group] + index) % count, keyed_record

        written = (rows
                   | f"{label} assign shards" >> beam.Map(deal, beam.pvalue.AsSingleton(offsets),
                                                          beam.pvalue.AsSingleton(shard_total))
                   | f"{label} by shard" >> beam.GroupByKey()
                   | f"{label} write" >> beam.Map(write_shard, beam.pvalue.AsSingleton(shard_total))
                   | f"{label} shard list" >> beam.combiners.ToList())
        outputs[split] = {"stats": stats, "shards": written, "shard_count": shard_total, "documents": documents}

    # ---------------------------------------------------------------- the data audit, on a sample by key
    train_count = outputs["train"]["documents"] | "Count train documents" >> beam.combiners.Count.Globally()

    def sampled(kv, total):  # chosen as the trainer's own audit chooses (diagnosis.audit_bound)
        return kv[0] < diagnosis.audit_bound(total)

    audit_train = (outputs["train"]["documents"] | "Audit sample" >> beam.Filter(sampled,
                                                                                 beam.pvalue.AsSingleton(text_total))
                   | "Audit sample list" >> beam.combiners.ToList())
    audit_validation = outputs["validation"]["documents"] | "Audit validation list" >> beam.combiners.ToList()
    audited = (pipeline | "Audit" >> beam.Create([None])
               | "Run the audit" >> beam.Map(run_audit, beam.pvalue.AsSingleton(audit_train),
                                             beam.pvalue.AsSingleton(audit_validation),
                                             beam.pvalue.AsSingleton(train_count), tokenizer_path, add_tokens,
                                             audit_settings, pairs))

    names = [split for split, _ in splits]

    def results(_, audit_result, *per_split):
        """per_split: (stats, shards, shard count) of each split of `names`, in order."""
        answer = {"audit": audit_result}
        for index, split in enumerate(names):
            stats, shards, count = per_split[3 * index:3 * index + 3]
            if split == "test" and not stats.get("documents"):
                continue  # the test fraction took no document: no files for it, as local_prepare
            by_index = {s["index"]: s for s in shards}
            # A shard given no row (fewer rows than shards) is still a file, so names run 0..count-1.
            listed = [by_index.get(i) or write_shard_file(folder, split, i, count, []) for i in range(count)]
            answer[split] = split_answer(stats, stats.get("lengths", collections.Counter()), listed)
        filesystem.write_json(filesystem.join(folder, RESULTS), answer)

    singleton = beam.pvalue.AsSingleton
    _ = (pipeline | "Results" >> beam.Create([None])
         | "Write results" >> beam.Map(results, singleton(audited),
                                       *[singleton(outputs[split][part]) for split in names
                                         for part in ("stats", "shards", "shard_count")]))


def _group_offsets(rows_per_group) -> dict:
    """{"offsets": {group: first row number}, "rows": total} from [(group, rows), ...]."""
    offsets, total = {}, 0
    for group, rows in sorted(rows_per_group):
        offsets[group] = total
        total += rows
    return {"offsets": offsets, "rows": total}


def shards_for(split: str, rows_total: int, num_shards, bytes_per_row: int) -> int:
    """Shards of a split: --shards for training when given (each must get a row), else ~64 MB each."""
    if split == "train" and num_shards:
        if num_shards > rows_total:
            raise UserError(f"--shards={num_shards} is more than the {rows_total:,} training rows: every "
                            f"shard needs a row. Use --shards={max(rows_total, 1)} or fewer.")
        return num_shards
    return shards_lib.shard_count(rows_total, bytes_per_row, shards_lib.MIN_TRAIN_SHARDS if split == "train" else 1)


def write_shard_file(folder: str, split: str, index: int, count: int, records: list[bytes]) -> dict:
    """One TFRecord shard, written whole (atomic); its entry with the digest of its records."""
    import tensorflow as tf

    name = shards_lib.shard_name(split, index, count)
    digest = hashlib.sha256()
    for record in records:
        digest.update(record)

    def write(tmp):
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
    filesystem.write_file(filesystem.join(folder, name), write)
    return {"index": index, "file": name, "rows": len(records), "sha256": digest.hexdigest()}


def split_answer(stats: dict, lengths: collections.Counter, shards: list[dict]) -> dict:
    """A split's part of the answer: stats, the length summary, shards in index order, one digest."""
    shards = sorted(shards, key=lambda s: s["index"])
    return {"stats": {k: v for k, v in stats.items() if k != "lengths"}, "lengths": _length_summary(lengths),
            "shards": [{"file": s["file"], "rows": s["rows"]} for s in shards],
            "sha256": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()}


LENGTH_BATCH = 1000


def run_audit(_, train_sample, validation, train_total, tokenizer_path, add_tokens, audit_settings, pairs):
    """The doctor's data audit on the sample: (findings as dicts, stats), JSON-ready."""
    if not audit_settings.get("enabled", True):
        return {"findings": [], "stats": {}, "sampled": 0, "documents": train_total}
    tokenizer = model_lib.load_tokenizer(tokenizer_path, add_tokens, log=lambda m: None)
    train_sample = [d for _, d in sorted(train_sample)]
    validation = [d for _, d in sorted(validation)]

    def tokenize(texts):
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    # Lengths a batch at a time: the tokenizer's output for a whole 100,000-document
    # sample (ids, offsets, masks as Python objects) took ~3 GB at 20M tokens.
    batches = [train_sample[i:i + LENGTH_BATCH] for i in range(0, len(train_sample), LENGTH_BATCH)]
    if pairs:
        sizes = [(len(p), len(c)) for batch in batches for p, c in data_lib.encode_examples(batch, tokenizer)]
        prompt_completion = {"pairs": train_sample, "prompt_tokens": [p for p, _ in sizes],
                             "completion_tokens": [c for _, c in sizes]}
        lengths = [p + c for p, c in sizes]
        train_texts, val_texts = [p + c for p, c in train_sample], [p + c for p, c in validation]
    else:
        prompt_completion = None
        lengths = [len(ids) + 1 for batch in batches for ids in tokenize(batch)]
        train_texts, val_texts = train_sample, validation
    findings, stats = audit.audit_corpus(
        train_texts, val_texts, lengths, audit_settings["block_size"], audit_settings["batching"],
        tokenize=tokenize, n_positions=audit_settings["n_positions"], vocab_size=len(tokenizer),
        seed=audit_settings["seed"], normalized=tuple(audit_settings["normalized"]),
        prompt_completion=prompt_completion, text_separator=audit_settings["text_separator"])
    return {"findings": [_finding_dict(f) for f in findings], "stats": json.loads(json.dumps(stats, default=_plain)),
            "sampled": len(train_sample), "documents": train_total}


def _finding_dict(finding) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(finding), default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


@contextlib.contextmanager
def _workers_stderr(capture: bool):
    """Worker processes of the DirectRunner share this terminal and print every failing
    bundle's traceback (apache_beam's sdk_worker prints it unconditionally) and
    TensorFlow's start-up lines: send the file descriptor they inherit to a temporary
    file for the run, and show it only when the failure is not a user error."""
    state = {"show": False}
    if not capture:
        yield state
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield state
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if state["show"]:
                log.seek(0)
                sys.stderr.write(log.read()[-20_000:].decode("utf-8", "replace"))


def run(config, folder: str, tokenizer_path: str, pad_token_id: int, num_shards, bytes_per_row: int,
        audit_settings: dict,
        runner: str = "DirectRunner", direct_num_workers: int = 1, extra_options=()) -> dict:
    """Run the pipeline to the end; the RESULTS it wrote, read and removed."""
    import apache_beam as beam

    # Its INFO/WARN lines drown the terminal, and a worker's failure comes back as an ERROR
    # log of Beam's worker traceback before the exception that this function turns into
    # one line: the exception says it all.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    options = pipeline_options(runner, direct_num_workers, list(extra_options))
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, folder, tokenizer_path, pad_token_id, num_shards, bytes_per_row, audit_settings)
    separate = runner == "DirectRunner" and direct_num_workers > 1
    with _workers_stderr(separate) as captured:
        try:
            pipeline.run().wait_until_finish()
        except Exception as e:  # a worker's UserError comes back wrapped in the runner's exception
            text = str(e)
            if _USER_ERROR_MARK in text:
                raise UserError(text.split(_USER_ERROR_MARK, 1)[1].split("::end", 1)[0]) from None
            captured["show"] = True  # not ours: what the workers printed may say why
            raise
    path = filesystem.join(folder, RESULTS)
    answer = filesystem.read_json(path)
    filesystem.remove(path)
    return answer

