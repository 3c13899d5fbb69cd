"""Tokenizer: load the run's tokenizer, add tokens from a file (model.add_tokens), and
grow the model's embeddings to match, new rows at the mean of the trained ones."""

import numpy as np

from trainer import filesystem
from trainer.errors import UserError
from trainer.model.load import resolve_model_dir


def load_tokenizer(name_or_path: str, new_tokens_file: str = "", log=print):
    """The fast tokenizer; GPT-2 has no pad token, so padding reuses EOS (masked by position).

    new_tokens_file (config.model.add_tokens): its tokens are added here, so every
    path that tokenizes the run's data (in memory, trainer.prepare, its manifest
    check) gets the same ids from one call."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path), use_fast=True)
    if tokenizer.eos_token_id is None:
        raise UserError(f"The tokenizer at {name_or_path} has no EOS token; causal-LM fine-tuning "
                        "needs one so the model learns where text ends.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if new_tokens_file:
        add_tokens(tokenizer, read_new_tokens(new_tokens_file), log)
    return tokenizer


def match_vocabulary(model, tokenizer, log=print) -> int:
    """Grow the embeddings to the tokenizer's size (its added tokens), new rows at the mean.

    Call right after load_model, inside strategy.scope() and before a checkpoint
    restore: a resumed run's checkpoint holds the grown matrix. Returns the rows added."""
    return resize_embeddings_with_mean(model, len(tokenizer), log)


# Longer than any domain word (a long drug name has ~30 characters): such a line is a
# sentence or a whole list pasted on one line, not a token.
MAX_TOKEN_CHARS = 100


def read_new_tokens(path: str) -> list[str]:
    """The tokens of a config.model.add_tokens file, in file order.

    One token per line, taken verbatim: a leading space is kept, because GPT-2's
    byte-level BPE writes a word after a space as a different token. " aspirin"
    is the mid-sentence form (what most occurrences are); "aspirin" matches at the
    start of a text or line, and also inside longer words ("Antiaspirins"). List
    both forms when both matter. Trailing whitespace is refused (such a token takes
    the space away from the next word; in an editor it is invisible), and so are
    tabs and other control characters (a two-column file). Blank lines are skipped.
    There are no comments: "#include" or "#hashtag" can be tokens. A UTF-8 BOM
    (Windows editors) is ignored.
    """
    import codecs
    import unicodedata

    flag = f"--config.model.add_tokens={path}"
    path = filesystem.expand(path)
    if not filesystem.exists(path) or filesystem.isdir(path):
        raise UserError(f"{flag}: no such file. Give a UTF-8 text file with one new token per line, or "
                        '--config.model.add_tokens="" to add none.')
    raw = filesystem.read_bytes(path).removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{flag}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}). Save the file as "
                        "UTF-8.") from None
    tokens, first_line = [], {}
    # Lines split on "\n" only: str.splitlines() would also split on \x0c, \x1c or U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        token = line.removesuffix("\r")
        where = f"{flag}, line {number}"
        if not token.strip():
            continue
        if any(unicodedata.category(c) == "Cc" for c in token):
            raise UserError(f"{where}: {token!r} holds a tab or another control character. Give one token "
                            "per line and nothing else on it (no counts or second column).")
        if len(token) > MAX_TOKEN_CHARS:
            raise UserError(f"{where}: a token of {len(token)} characters ({token[:40]!r}...); tokens are "
                            f"words or short phrases of at most {MAX_TOKEN_CHARS}. Put one token per line.")
        if token != token.rstrip():
            raise UserError(f"{where}: {token!r} ends with whitespace, which would take the space away from "
                            "the word after it. Remove the trailing space (a leading space is meant: "
                            "' aspirin' is the mid-sentence form).")
        if token in first_line:
            raise UserError(f"{where}: {token!r} repeats line {first_line[token]}. List each token once.")
        first_line[token] = number
        tokens.append(token)
    if not tokens:
        raise UserError(f"{flag}: no tokens (the file is empty or blank). Add one token per line, or set "
                        '--config.model.add_tokens="" to add none.')
    return tokens


def add_tokens(tokenizer, tokens: list[str], log=print) -> list[str]:
    """Adds to `tokenizer` the tokens that are not single tokens of it yet; returns those added.

    Call before any text is tokenized. A token the vocabulary already has as one
    piece (" the", or one added by an earlier run whose export is the model now)
    is skipped and named in the log. New ids follow the vocabulary in file order.
    """
    from tokenizers import AddedToken

    def one_id(token):
        return len(tokenizer.encode(token, add_special_tokens=False)) == 1

    tokens = list(dict.fromkeys(tokens))  # once each, first place kept
    present = [t for t in tokens if one_id(t)]
    new = [t for t in tokens if t not in present]
    if present:
        log(f"Already single tokens of the vocabulary, not added: {present}.")
    if not new:
        return []
    # Measured (tokenizers 0.22, GPT-2's byte-level BPE, "Take aspirin daily."):
    #   "aspirin" (plain str, what add_tokens(str) gives) -> 'Take' 'Ġ' 'aspirin' 'Ġdaily': the space
    #     stays a token of its own, and "Antiaspirins" becomes 'Anti' 'aspirin' 's';
    #   " aspirin"                      -> 'Take' ' aspirin' 'Ġdaily': one id, decodes exactly; not
    #     matched at the start of a text or after "\n" (there it is "aspirin");
    #   "aspirin", lstrip=True          -> one id, but the space is swallowed: decodes "Takeaspirin";
    #   normalized=True or False        -> the same (GPT-2 has no normalizer);
    #   single_word=True                -> stops the in-word match, keeps 'Ġ' 'aspirin' mid-sentence.
    # So the file's leading space does the work and the defaults stay (normalized=True: a
    # tokenizer that has a normalizer matches the token in normalized text).
    tokenizer.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=True,
                                     special=False) for t in new])
    ids = tokenizer.convert_tokens_to_ids(new)
    split = [t for t, i in zip(new, ids) if tokenizer.encode(t, add_special_tokens=False) != [i]]
    if split:  # e.g. "x<|endoftext|>y": the special token inside is matched first
        raise UserError(f"--config.model.add_tokens: {split} still do not tokenize as one id once added "
                        "(a special token such as <|endoftext|> inside them?). Remove them from the file.")
    log(f"Added {len(new)} token(s) to the tokenizer, ids {ids[0]}-{ids[-1]}: {new}.")
    # tokenizers' ByteLevel decoder reads an added token as byte symbols when each of its
    # characters is one (every Latin-1 letter is): "paracétamol" decodes as "parac\ufffdtamol".
    # One character outside that alphabet (a space, CJK) makes it use the UTF-8 text, so
    # " paracétamol" decodes right. Tokenizing (what training sees) is exact either way.
    garbled = [t for t, i in zip(new, ids) if tokenizer.decode([i]) != t]
    if garbled:
        log(f"Warning: {garbled} tokenize correctly but come out garbled when decoded (generated text, "
            "samples): a limit of the byte-level decoder for added tokens with accented letters and no "
            "leading space. The forms with a leading space decode correctly.")
    unspaced = [t for t in new if not t.startswith(" ") and " " + t not in tokens]
    if unspaced:
        log(f"Note: {unspaced[:5]} have no leading space: they match at the start of a text or line (and "
            f"inside words). Mid-sentence, after a space, the text holds {' ' + unspaced[0]!r}, a different "
            "token; list that form too for it to be one id there.")
    return new


def resize_embeddings_with_mean(model, vocab_size: int, log=print) -> int:
    """Grows GPT-2's token embedding (also its output layer: GPT-2 ties them) to vocab_size rows,
    each new row the mean of the existing ones; returns the number of rows added (0: nothing to do).

    Not random rows (what transformers gives): their norm is unlike the trained rows', so
    the new tokens' logits are arbitrary and the first steps' loss on them is too. At the
    mean, each new token's logit is the average logit of the old ones, so the model's
    predictions barely move until training teaches the new rows (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models").

    transformers' resize_token_embeddings does the growing: it keeps the variable name
    ('.../transformer/wte/embeddings:0', so the tf_model.h5, the PyTorch export and the
    checkpoints' 'transformer/wte/embeddings' key are unchanged) and updates config.vocab_size.
    It fills the new rows from a TruncatedNormal(0.02); they are overwritten here. Works
    inside strategy.scope(): the new variable is created there, and the whole matrix is
    assigned from the host, which every replica's copy receives.
    """
    embedding = model.get_input_embeddings()
    old_size = int(embedding.embeddings.shape[0])
    if vocab_size <= old_size:
        return 0
    if model.get_output_embeddings() is not embedding or model.get_bias() is not None:
        raise UserError(f"{type(model).__name__} has an output layer separate from its token embedding; "
                        "tunewell grows tied embeddings (GPT-2's) only, so tokens cannot be added to it.")
    old = embedding.embeddings.numpy()
    # Summed in float64: over 50,257 rows, float32 sums would lose the last bits of the mean.
    mean = old.astype(np.float64).mean(axis=0).astype(old.dtype)
    model.resize_token_embeddings(vocab_size)
    grown = model.get_input_embeddings().embeddings
    grown.assign(np.concatenate([old, np.broadcast_to(mean, (vocab_size - old_size, old.shape[1]))]))
    log(f"Token embeddings grown {old_size:,} -> {vocab_size:,} rows for added tokens; the new rows start "
        "at the mean of the existing ones.")
    return vocab_size - old_size
