"""trainer.prepare on this machine in bounded memory: beam_prepare.py's steps, streamed
through files on local disk instead of held in memory.

Beam's DirectRunner keeps every collection between two steps in memory: measured
on this machine (bench/prepare.md) about 270 bytes a token, 6.3 GB at 20M tokens,
so a corpus of billions of tokens cannot be prepared with it on one machine. This
runner calls the same plain functions in the same order (file_documents /
file_examples, document_key, the split by the smallest keys, encode_batch, group_of,
group_rows, row_key, the deal of row r to shard r % S) and spills between them to a
temporary folder, so it writes byte-identical shards (tests/test_beam_prepare.py)
and holds one packing group (~4M tokens) or one shard (~64 MB) at a time:

    pass 1  read every file: count documents and their text, keep the smallest keys
            (the split)
    pass 2  read again: split, keep the audit's sample (keys under a bound), tokenize
            in batches (N processes), append (key, ids) to a spill file; once the
            token count is known, deal them into one file per packing group
    pass 3  per group, in group order: sort by key, pack, deal rows into shard spills
    pass 4  per shard: sort by row key, write the TFRecord file

Disk: the spill peaks near the shards' own size (the rows once, before they are
sorted into shards; token ids before that take a third of it), in the system's
temp folder ($TMPDIR), removed at the end (a SIGKILL leaves tunewell-prepare-*
there; the prepared folder itself has no manifest then and is redone).
"""

import collections
import heapq
import os
import struct
import tempfile

import numpy as np

from trainer import data as data_lib
from trainer import diagnosis
from trainer import model as model_lib
from trainer import settings
from trainer.data import keys
from trainer.run import beam_prepare

# Documents sent to a tokenizer process at once (and tokenized in one call), and batches
# sent ahead per process: 512 x 4 x ~2 KB documents = ~4 MB of text waiting per process.
TOKENIZE_BATCH = 512
IN_FLIGHT = 4
# Spill records: key, then one length per array, then the int32 arrays.
_HEADER = struct.Struct("<QII")  # key, first length, second length (_ONE_ARRAY: a text's one array)
_ONE_ARRAY = 0xFFFFFFFF


def _write_item(f, key: int, item) -> None:
    first, second = item if isinstance(item, tuple) else (item, None)
    f.write(_HEADER.pack(key, len(first), _ONE_ARRAY if second is None else len(second)))
    f.write(np.asarray(first, np.int32).tobytes())
    if second is not None:
        f.write(np.asarray(second, np.int32).tobytes())


def _read_items(path: str):
    """(key, item) of a spill file, in the order written."""
    with open(path, "rb") as f:
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            key, first_length, second_length = _HEADER.unpack(header)
            first = np.frombuffer(f.read(4 * first_length), np.int32)
            if second_length == _ONE_ARRAY:
                yield key, first
            else:
                yield key, (first, np.frombuffer(f.read(4 * second_length), np.int32))


def _write_record(f, key: int, record: bytes) -> None:
    f.write(struct.pack("<QI", key, len(record)))
    f.write(record)


def _read_records(path: str):
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            key, length = struct.unpack("<QI", header)
            yield key, f.read(length)


# ----------------------------------------------------------------------------- tokenizing processes

_TOKENIZER = {}


def _start_tokenizer(path: str, add_tokens: str) -> None:
    _TOKENIZER["tokenizer"] = model_lib.load_tokenizer(path, add_tokens, log=lambda m: None)


def _tokenize(batch: list, pairs: bool) -> list:
    """[(key, document, split)] -> [(key, split, ids or (prompt ids, completion ids))]."""
    encoded = beam_prepare.encode_items([document for _, document, _ in batch], _TOKENIZER["tokenizer"], pairs)
    return [(key, split, item) for (key, _, split), item in zip(batch, encoded)]


def _batches(documents, size: int):
    batch = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Tokenizers:
    """encode(batches) -> tokenized batches in order, in `workers` processes (1: this one)."""

    def __init__(self, path: str, add_tokens: str, pairs: bool, workers: int):
        self.pairs, self.pool, self.workers = pairs, None, workers
        if workers > 1:
            import multiprocessing

            # spawn, not fork: this process has TensorFlow's threads running.
            self.pool = multiprocessing.get_context("spawn").Pool(workers, _start_tokenizer, (path, add_tokens))
        else:
            _start_tokenizer(path, add_tokens)

    def map(self, batches):
        """Tokenized batches in order. At most IN_FLIGHT batches per process are sent ahead:
        Pool.imap would read the whole corpus into its task queue while the processes work."""
        if self.pool is None:
            yield from (_tokenize(batch, self.pairs) for batch in batches)
            return
        pending = collections.deque()
        for batch in batches:
            pending.append(self.pool.apply_async(_tokenize, (batch, self.pairs)))
            if len(pending) >= IN_FLIGHT * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


# ----------------------------------------------------------------------------- the passes


def _documents(files: list[str], data_config, pairs: bool):
    """Every document of the files, streamed (beam_prepare.records_of_file)."""
    for path in files:
        yield from beam_prepare.records_of_file(path, data_config, pairs, on_worker=False)


def run(config, folder: str, tokenizer_path: str, pad_token_id: int, num_shards, bytes_per_row: int,
        audit_settings: dict, workers: int = 1) -> dict:
    """The answer beam_prepare.run returns (shards written, stats, audit), in bounded memory."""
    data_config, seed = config.data, config.seed
    pairs = settings.is_prompt_completion(data_config)
    batching = settings.batching_of(data_config)
    block_size = data_config.block_size
    train_files = data_lib.expand_files(data_config.train_files, "--config.data.train_files")
    validation_files = (data_lib.expand_files(data_config.validation_files, "--config.data.validation_files")
                        if data_config.validation_files else [])
    test_files = data_lib.expand_files(data_config.test_files, "--config.data.test_files") \
        if data_config.test_files else []
    # Test documents of the training files are set aside first, as load_documents does.
    test_threshold = None if test_files else keys.test_threshold(data_config.test_fraction)

    def keyed(files):
        for document in _documents(files, data_config, pairs):
            yield keys.document_key(document, seed), document

    # ---------------------------------------------------------------- pass 1: counts, split, audit sample
    count, text_total, smallest = 0, 0, []  # smallest: a max-heap (negated) of the N smallest keys
    limit = max(1, data_config.validation_max_examples)
    for key, document in keyed(train_files):
        if keys.is_test(key, test_threshold):
            continue
        count += 1
        text_total += diagnosis.text_bytes(document)
        if len(smallest) < limit:
            heapq.heappush(smallest, -key)
        elif -smallest[0] > key:
            heapq.heapreplace(smallest, -key)
    threshold = None
    if not validation_files:
        threshold = keys.validation_threshold([-k for k in smallest],
                                              keys.validation_count(count, data_config.validation_fraction,
                                                                    data_config.validation_max_examples))

    def is_validation(key: int) -> bool:
        return threshold is not None and key <= threshold

    with tempfile.TemporaryDirectory(prefix="tunewell-prepare-") as spill:
        tokenizers = _Tokenizers(tokenizer_path, config.model.add_tokens, pairs, workers)
        try:
            # ------------------------------------------------------------ pass 2: split, tokenize, spill
            auditing = audit_settings.get("enabled", True)
            audit_bound = diagnosis.audit_bound(text_total) if auditing else 0
            audit_train, audit_validation = [], []
            totals = {"train": 0, "validation": 0, "test": 0}  # tokens
            documents_of = {"train": 0, "validation": 0, "test": 0}
            paths = {split: os.path.join(spill, f"{split}.tokens") for split in totals}
            outs = {split: open(path, "wb") for split, path in paths.items()}

            sources = [(train_files, lambda key: "test" if keys.is_test(key, test_threshold) else
                        "validation" if is_validation(key) else "train")]
            if validation_files:
                sources.append((validation_files, lambda key: "validation"))
            if test_files:
                sources.append((test_files, lambda key: "test"))
            for files, split_of in sources:
                documents = _spread(keyed(files), split_of, audit_bound, audit_train,
                                    audit_validation if auditing else None)
                for tokenized in tokenizers.map(_batches(documents, TOKENIZE_BATCH)):
                    for key, split, item in tokenized:
                        _write_item(outs[split], key, item)
                        totals[split] += beam_prepare.item_tokens(item)
                        documents_of[split] += 1
            for f in outs.values():
                f.close()
        finally:
            tokenizers.close()

        # ---------------------------------------------------------------- passes 3 and 4, per split
        answer = {}
        for split in ("train", "validation", "test"):
            if split == "test" and not documents_of["test"]:
                continue  # no test split: no files for it
            answer[split] = _rows_and_shards(split, paths[split], totals[split], spill, folder, seed, block_size,
                                             batching, pad_token_id, num_shards if split == "train" else None,
                                             bytes_per_row)
    audit_train.sort()
    audit_validation.sort()
    answer["audit"] = beam_prepare.run_audit(None, audit_train, audit_validation, documents_of["train"],
                                             tokenizer_path, config.model.add_tokens, audit_settings, pairs)
    return answer


def _spread(documents, split_of, audit_bound, audit_train, audit_validation):
    """(key, document, split) of each document; the audit's sample kept on the way."""
    for key, document in documents:
        split = split_of(key)
        if split == "validation":
            if audit_validation is not None:
                audit_validation.append((key, document))
        elif split == "train" and key < audit_bound:
            audit_train.append((key, document))
        yield key, document, split


def _rows_and_shards(split, tokens_path, total_tokens, spill, folder, seed, block_size, batching, pad_token_id,
                     num_shards, bytes_per_row) -> dict:
    keep_tail = split != "train"  # validation and test: every token scored, one group
    groups = 1 if keep_tail else keys.group_count(total_tokens)
    # Deal the spilled documents into one file per group (groups are known only now).
    group_paths = [os.path.join(spill, f"{split}.group-{g}") for g in range(groups)]
    if groups == 1:
        group_paths = [tokens_path]
    else:
        outs = [open(path, "wb") for path in group_paths]
        for key, item in _read_items(tokens_path):
            _write_item(outs[keys.group_of(key, groups)], key, item)
        for f in outs:
            f.close()
        os.remove(tokens_path)

    # Pass 3: pack each group in group order, rows numbered across groups.
    stats, row_spills, rows_total = {}, [], 0
    for group, path in enumerate(group_paths):
        blocks = beam_prepare.pack_group(_read_items(path), block_size, batching, pad_token_id, keep_tail)
        stats = beam_prepare.add_stats(stats, beam_prepare.stats_of(blocks))
        row_path = path + ".rows"
        with open(row_path, "wb") as f:
            for _, key, record in beam_prepare.group_records(blocks, seed, split, group):
                _write_record(f, key, record)
        row_spills.append(row_path)
        rows_total += blocks.rows
        os.remove(path)
    count = beam_prepare.shards_for(split, rows_total, num_shards, bytes_per_row)

    # Row r (across groups in order) to shard r % count, as beam_prepare deals them.
    shard_paths = [os.path.join(spill, f"{split}.shard-{s}") for s in range(count)]
    outs = [open(path, "wb") for path in shard_paths]
    row = 0
    for path in row_spills:
        for key, record in _read_records(path):
            _write_record(outs[row % count], key, record)
            row += 1
        os.remove(path)
    for f in outs:
        f.close()

    # Pass 4: each shard sorted by row key, written whole.
    shards = []
    for index, path in enumerate(shard_paths):
        records = [record for _, record in sorted(_read_records(path), key=lambda kr: kr[0])]
        shards.append(beam_prepare.write_shard_file(folder, split, index, count, records))
        os.remove(path)
    return beam_prepare.split_answer(stats, stats.get("lengths", collections.Counter()), shards)
