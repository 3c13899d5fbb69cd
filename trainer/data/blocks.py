"""Blocks: token ids to [rows, block_size] int32 rows, packed or padded, with their labels.

Labels are the input ids themselves, with -100 (IGNORE_INDEX) wherever a position
must not be scored: padding, and the prompt of prompt/completion data. The model's
loss (trainer/training/steps.py) shifts them once."""

import dataclasses
import hashlib
import itertools

import numpy as np

from trainer import settings
from trainer.data import keys, tokens


IGNORE_INDEX = -100  # label value that the loss skips (transformers' convention)


@dataclasses.dataclass
class Blocks:
    """Rows of block_size tokens ready for the model, and what it cost to make them."""
    input_ids: np.ndarray       # [rows, block_size] int32
    attention_mask: np.ndarray  # [rows, block_size] int32, 0 on padding
    labels: np.ndarray          # [rows, block_size] int32, IGNORE_INDEX on padding
    documents: int
    tokens: int                 # tokens of all documents, EOS included
    dropped_tokens: int = 0     # packed: the tail shorter than one block
    truncated_documents: int = 0  # padded: documents longer than block_size
    truncated_tokens: int = 0
    document_lengths: np.ndarray | None = None  # tokens per document, EOS included (for the doctor)
    # Prompt/completion data: the prompt's tokens of each example (document_lengths then
    # holds prompt + completion + EOS), and examples whose completion itself was cut.
    prompt_lengths: np.ndarray | None = None
    truncated_completions: int = 0

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def supervised_tokens(self) -> int:
        """Positions the loss scores: a label at t+1 that is not IGNORE_INDEX."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def stats(self) -> dict:
        stats = {"documents": self.documents, "rows": self.rows, "tokens": self.tokens,
                 "dropped_tokens": self.dropped_tokens, "truncated_documents": self.truncated_documents,
                 "truncated_tokens": self.truncated_tokens, "supervised_tokens": self.supervised_tokens}
        if self.prompt_lengths is not None:
            stats["truncated_completions"] = self.truncated_completions
        return stats


def pack_blocks(token_ids: list[np.ndarray], block_size: int, pad_token_id: int = 0,
                keep_tail: bool = False) -> Blocks:
    """Concatenate documents (each ending in EOS) and cut full blocks; no padding.

    A 1,000-token corpus at block_size 128 gives 7 blocks (896 tokens) and drops
    the last 104 tokens: every token of every block is real and supervised.
    keep_tail (validation): the last 104 tokens become an 8th row, padded and
    masked, so every validation token is scored.
    """
    stream = np.concatenate(token_ids) if token_ids else np.zeros([0], np.int32)
    rows = len(stream) // block_size
    tail = len(stream) - rows * block_size
    ids = stream[: rows * block_size].reshape(rows, block_size).astype(np.int32)
    mask = np.ones_like(ids)
    if keep_tail and tail:
        last = np.full([1, block_size], pad_token_id, np.int32)
        last[0, :tail] = stream[rows * block_size:]
        ids = np.concatenate([ids, last])
        mask = np.concatenate([mask, (np.arange(block_size) < tail).astype(np.int32)[None]])
        tail = 0
    labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    return Blocks(ids, mask, labels, documents=len(token_ids), tokens=len(stream), dropped_tokens=tail,
                  document_lengths=np.array([len(d) for d in token_ids], np.int64))


def pad_blocks(token_ids: list[np.ndarray], block_size: int, pad_token_id: int) -> Blocks:
    """One document per row, truncated to block_size, padding masked out.

    The pad id is often the EOS id (GPT-2 has no pad token), so padding is found
    by position (past the document's length), never by comparing ids: a real EOS
    stays supervised and the model still learns to stop.
    """
    n = len(token_ids)
    ids = np.full([n, block_size], pad_token_id, np.int32)
    mask = np.zeros([n, block_size], np.int32)
    truncated_documents = truncated_tokens = 0
    for row, doc in enumerate(token_ids):
        length = min(len(doc), block_size)
        if len(doc) > block_size:
            truncated_documents += 1
            truncated_tokens += len(doc) - block_size
        ids[row, :length] = doc[:length]
        mask[row, :length] = 1
    labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    return Blocks(ids, mask, labels, documents=n, tokens=int(sum(len(d) for d in token_ids)),
                  truncated_documents=truncated_documents, truncated_tokens=truncated_tokens,
                  document_lengths=np.array([len(d) for d in token_ids], np.int64))


def fit_example(prompt: np.ndarray, completion: np.ndarray, block_size: int):
    """(prompt, completion) cut to fit block_size: the prompt loses its START (the end,
    next to the completion, is the context that matters most, and the task instruction
    usually sits in a template around it); the completion is cut at the right only when
    it does not fit beside one prompt token. Returns the two and whether each was cut.

    block_size 128, a 150-token prompt and a 30-token completion (EOS included): the
    prompt keeps its last 98 tokens, the completion all 30."""
    cut_completion = len(completion) > block_size - 1
    if cut_completion:  # one prompt token stays, so the completion's first token is scored
        completion = completion[: block_size - 1]
    room = block_size - len(completion)
    cut_prompt = len(prompt) > room
    return prompt[len(prompt) - room:] if cut_prompt else prompt, completion, cut_prompt, cut_completion


def example_blocks(prompts: list[np.ndarray], completions: list[np.ndarray], block_size: int,
                   pad_token_id: int, packed: bool) -> Blocks:
    """Prompt/completion examples in rows: labels IGNORE_INDEX on every prompt token and on
    padding, the completion's tokens and its EOS scored.

    padded: one example per row. packed: whole examples placed one after another in a
    row while they fit (no example is split across rows), the rest of the row padded.
    Within a packed row each example attends to the examples before it (GPT-2 takes
    a 2-D padding mask, not a per-example one); that context is never scored: an
    example's first scored token is its completion's first, predicted from its own
    prompt's last token, and every prompt token (the boundary included) is -100.
    Positions also continue across examples. README "Fine-tune for a task" has the
    measured effect against padded rows, where each example is alone."""
    ids_rows, label_rows = [], []
    current_ids, current_labels = [], []
    truncated = truncated_completions = truncated_tokens = 0
    for prompt, completion in zip(prompts, completions):
        fitted_prompt, fitted_completion, cut_prompt, cut_completion = fit_example(prompt, completion, block_size)
        truncated += cut_prompt or cut_completion
        truncated_completions += cut_completion
        truncated_tokens += len(prompt) + len(completion) - len(fitted_prompt) - len(fitted_completion)
        ids = np.concatenate([fitted_prompt, fitted_completion]).astype(np.int32)
        labels = np.concatenate([np.full(len(fitted_prompt), IGNORE_INDEX, np.int32),
                                 fitted_completion.astype(np.int32)])
        if current_ids and (not packed or sum(map(len, current_ids)) + len(ids) > block_size):
            ids_rows.append(current_ids)
            label_rows.append(current_labels)
            current_ids, current_labels = [], []
        current_ids.append(ids)
        current_labels.append(labels)
    if current_ids:
        ids_rows.append(current_ids)
        label_rows.append(current_labels)
    n = len(ids_rows)
    input_ids = np.full([n, block_size], pad_token_id, np.int32)
    mask = np.zeros([n, block_size], np.int32)
    labels = np.full([n, block_size], IGNORE_INDEX, np.int32)
    for row, (row_ids, row_labels) in enumerate(zip(ids_rows, label_rows)):
        joined = np.concatenate(row_ids)
        input_ids[row, :len(joined)] = joined
        mask[row, :len(joined)] = 1
        labels[row, :len(joined)] = np.concatenate(row_labels)
    lengths = np.array([len(p) + len(c) for p, c in zip(prompts, completions)], np.int64)
    return Blocks(input_ids, mask, labels, documents=len(prompts), tokens=int(lengths.sum()),
                  truncated_documents=truncated, truncated_tokens=truncated_tokens, document_lengths=lengths,
                  prompt_lengths=np.array([len(p) for p in prompts], np.int64),
                  truncated_completions=truncated_completions)


def group_rows(items: list, block_size: int, batching: str, pad_token_id: int, keep_tail: bool = False) -> Blocks:
    """The rows of one packing group (trainer/data/keys.py), its documents in key order.

    items: token ids per document (EOS appended), or (prompt ids, completion ids)
    pairs. The one function that makes rows: the in-process path calls it per group
    (make_blocks), the Beam pipeline per group on its workers."""
    if items and isinstance(items[0], tuple):
        return example_blocks([p for p, _ in items], [c for _, c in items], block_size, pad_token_id,
                              packed=batching == "packed")
    if batching == "packed":
        return pack_blocks(items, block_size, pad_token_id, keep_tail)
    return pad_blocks(items, block_size, pad_token_id)


def concat_blocks(parts: list[Blocks], block_size: int) -> Blocks:
    """Groups' rows one after another, their counts summed."""
    def joined(name, dtype=np.int32, width=(block_size,)):
        arrays = [getattr(b, name) for b in parts if getattr(b, name) is not None]
        return np.concatenate(arrays) if arrays else np.zeros([0, *width], dtype)

    total = {f: sum(getattr(b, f) for b in parts) for f in
             ("documents", "tokens", "dropped_tokens", "truncated_documents", "truncated_tokens",
              "truncated_completions")}
    pairs = any(b.prompt_lengths is not None for b in parts)
    return Blocks(joined("input_ids"), joined("attention_mask"), joined("labels"),
                  document_lengths=joined("document_lengths", np.int64, ()),
                  prompt_lengths=joined("prompt_lengths", np.int64, ()) if pairs else None, **total)


def make_blocks(documents, tokenizer, data_config, desc, keep_tail=False, *, seed: int):
    """documents: texts, or (prompt, completion) pairs when data_config names both fields.
    keep_tail: score every token (validation) rather than only full blocks (training).
    seed: the run's config.seed; it orders the documents (keys.py), so it has no default:
    another seed packs other rows, as trainer.prepare would.

    Documents are packed within groups of about keys.GROUP_TOKENS tokens, in the
    order of their keys (keys.py), exactly as the Beam pipeline of trainer.prepare
    packs them: the same rows, in memory. keep_tail (validation, which is capped at
    validation_max_examples documents) packs in one group."""
    pairs = settings.is_prompt_completion(data_config)
    if pairs:
        prompts, completions = tokens.tokenize_examples(documents, tokenizer, data_config.num_proc, desc,
                                                        data_config.cache_dir)
        items = list(zip(prompts, completions))
        total = sum(len(p) + len(c) for p, c in items)
    else:
        items = tokens.tokenize(documents, tokenizer, data_config.num_proc, desc, data_config.cache_dir)
        total = sum(len(t) for t in items)
    groups = 1 if keep_tail else keys.group_count(total)
    placed = sorted((keys.group_of(k, groups), k, i) for i, k in
                    enumerate(keys.document_key(d, seed) for d in documents))
    batching = settings.batching_of(data_config)
    parts = [group_rows([items[i] for _, _, i in members], data_config.block_size, batching, tokenizer.pad_token_id,
                        keep_tail)
             for _, members in itertools.groupby(placed, key=lambda p: p[0])]
    if not parts:
        parts = [group_rows([], data_config.block_size, batching, tokenizer.pad_token_id, keep_tail)]
    return concat_blocks(parts, data_config.block_size)


def decode_pairs(blocks: Blocks, tokenizer, max_examples: int = 2000) -> list[tuple[str, str]]:
    """(prompt, completion) pairs back from prompt/completion rows (prepared data): an
    example starts where an unscored token (a prompt's, attention on) follows a scored
    one or the row's start; its completion is the scored run, EOS dropped."""
    pairs = []
    for ids, mask, labels in zip(blocks.input_ids, blocks.attention_mask, blocks.labels):
        scored = labels != IGNORE_INDEX
        prompt, completion = [], []
        for token, on, is_scored in zip(ids.tolist(), mask.tolist(), scored.tolist()):
            if not on:
                break
            if not is_scored and completion:  # the next example's prompt begins
                pairs.append((prompt, completion))
                prompt, completion = [], []
            (completion if is_scored else prompt).append(token)
        if prompt or completion:
            pairs.append((prompt, completion))
        if len(pairs) >= max_examples:
            break
    eos = tokenizer.eos_token_id
    decoded = []
    for prompt, completion in pairs[:max_examples]:
        prompt = [] if prompt == [eos] else prompt  # the stand-in for an empty prompt
        completion = completion[:-1] if completion and completion[-1] == eos else completion
        decoded.append((tokenizer.decode(prompt), tokenizer.decode(completion)))
    return decoded


def decode_documents(blocks: Blocks, tokenizer, max_documents: int = 2000) -> list[str]:
    """Texts back from rows (prepared data): split at EOS, padding dropped. A packed
    row's first text may be the tail of a document from the row before."""
    eos = tokenizer.eos_token_id
    texts, current = [], []
    for ids, mask in zip(blocks.input_ids, blocks.attention_mask):
        for token in ids[mask == 1].tolist():
            if token == eos:
                texts.append(current)
                current = []
            else:
                current.append(token)
        if blocks.documents == blocks.rows and current:  # padded: one document per row
            texts.append(current)
            current = []
        if len(texts) >= max_documents:
            break
    decoded = tokenizer.batch_decode([t for t in texts[:max_documents] if t])
    return [t.strip() for t in decoded if t.strip()]


FIELDS = ("input_ids", "attention_mask", "labels")


def data_fingerprint(train_blocks, val_blocks) -> dict:
    """Rows, tokens and a hash of the token ids the run trains and validates on.

    Hashing the tokenized blocks, not the files, also catches a changed
    tokenizer, block size or validation split (~1 s per 250M tokens)."""
    digest = hashlib.sha256()
    for blocks in (train_blocks, val_blocks):
        for array in (blocks.input_ids, blocks.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
    return {"train_rows": train_blocks.rows, "train_tokens": train_blocks.tokens,
            "validation_rows": val_blocks.rows, "validation_tokens": val_blocks.tokens,
            "sha256": digest.hexdigest()}
