"""Stable keys: where a document or a row goes is a function of its own content and
the seed, never of the order it was read in or of the machine that read it.

A document's key decides its split (the validation set is the documents with the
smallest keys), its packing group and its place inside the group; a row's key
decides its shard and its place inside the shard. Any runner, any number of
workers and the in-process path therefore make the same rows: no counter, no
global random state, nothing that depends on which bundle a document landed in.

Copies of one text share a key, so they fall on the same side of the split: an
exact duplicate can never leak from training into validation.
"""

import hashlib

from trainer.errors import UserError

KEY_BITS = 64


def document_key(document, seed: int) -> int:
    """64-bit key of a text, or of a (prompt, completion) pair, under `seed`.

    blake2b keyed by the seed: uniform over [0, 2**64), so "the n smallest keys" is
    a uniform random sample of n documents, and another seed is another sample."""
    if isinstance(document, tuple):  # ("ab", "c") and ("a", "bc") are different examples
        document = "\0".join(document)
    digest = hashlib.blake2b(document.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


def validation_count(documents: int, fraction: float, max_examples: int) -> int:
    """Documents held out: fraction of them, at least 1, at most max_examples, and never
    all (10% of 25,000 documents capped at 2,000 = 2,000)."""
    if documents < 2:
        raise UserError(
            f"The training data has {documents} document(s); at least 2 are needed to hold one out "
            "for validation. Add data or pass --config.data.validation_files.")
    if not 0 < fraction < 1:
        raise UserError(f"--config.data.validation_fraction={fraction} must be between 0 and 1.")
    return int(min(max(1, round(fraction * documents)), max_examples, documents - 1))


def validation_threshold(smallest_keys, count: int) -> int:
    """The largest key held out: validation is every document whose key is at most this.

    smallest_keys: the smallest keys of the corpus, at least `count` of them (a
    bounded combiner gives them on any runner). Copies of a held-out document share
    its key and are held out with it, so validation may hold a few more than count."""
    return sorted(smallest_keys)[count - 1]


def split_documents(documents: list, fraction: float, max_examples: int, seed: int):
    """Hold out whole documents for validation, BEFORE packing: the ones with the smallest keys.

    Splitting packed blocks instead would put the two halves of a document on
    both sides, and validation would measure memorisation of its neighbour.
    Order within each side is kept. Documents are texts or (prompt, completion) pairs."""
    keys = [document_key(d, seed) for d in documents]
    threshold = validation_threshold(keys, validation_count(len(documents), fraction, max_examples))
    train = [d for d, k in zip(documents, keys) if k > threshold]
    validation = [d for d, k in zip(documents, keys) if k <= threshold]
    if not train:
        raise UserError(f"All {len(documents)} training documents are copies of the held-out ones: nothing is left "
                        "to train on. Deduplicate the data, or pass --config.data.validation_files.")
    return train, validation


# The test split: the documents whose key lies in the top test_fraction of the key
# range, key >= 2**64 x (1 - fraction). A fixed threshold, unlike validation's "the n
# smallest keys": every reader (in memory, local_prepare, any Beam runner) decides a
# document's side alone, with no count or combiner first. The count is binomial around
# fraction x documents: 5% of 2,000 documents is 100 +- 10 (one standard deviation).
# Test documents are taken out before anything else looks at the training files, so the
# validation split, the plan and the audit see the files as if they were not there.


def test_threshold(fraction: float) -> int | None:
    """The smallest test key for data.test_fraction, or None when there is no test split."""
    if fraction <= 0:
        return None
    return 2**KEY_BITS - max(1, round(fraction * 2**KEY_BITS))


def is_test(key: int, threshold: int | None) -> bool:
    return threshold is not None and key >= threshold


def split_test(documents: list, fraction: float, seed: int):
    """(the rest, the test documents): the documents in the top `fraction` of the key range.

    Copies share a key, so a test document never has a copy left in training."""
    threshold = test_threshold(fraction)
    if threshold is None:
        return documents, []
    marks = [is_test(document_key(d, seed), threshold) for d in documents]
    return [d for d, t in zip(documents, marks) if not t], [d for d, t in zip(documents, marks) if t]


# Packing groups. Documents are packed into rows within groups of about
# GROUP_TOKENS tokens, not across the whole corpus, so one worker holds one group
# at a time (2**22 tokens = 16 MB of int32, ~50 MB with Python's per-document
# overhead) and groups pack in parallel. Each group drops its own tail of less
# than one block: at block 512 that is about 256 tokens a group, 256 / 4,194,304 =
# 0.006% of the tokens (one tail for the whole corpus before; on a corpus of
# under two groups nothing changes). A group holds ~20,000 documents of 200
# tokens, ~2,000 of 2,000 tokens: packing's fill (1 - padding) is as before.
GROUP_TOKENS = 2**22


def group_count(total_tokens: int) -> int:
    """Groups for a split of total_tokens: 2.5B tokens -> 596 groups; under 2**23 -> 1."""
    return max(1, total_tokens // GROUP_TOKENS)


def group_of(key: int, groups: int) -> int:
    """The packing group of a document: its key's high 32 bits, so the group and the place
    inside the group (the whole key) are not the same bits."""
    return (key >> 32) % groups


def row_key(seed: int, split: str, group: int, index: int) -> int:
    """64-bit key of the index-th row of a group: decides its shard and its place in the shard."""
    digest = hashlib.blake2b(f"{split}\0{group}\0{index}".encode(), digest_size=8,
                             key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")
