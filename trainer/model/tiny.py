"""Tiny GPT-2s built here (no hub): a byte-level BPE trained on the documents and a
randomly initialised model, saved as any checkpoint so they load through load_model."""

from trainer import filesystem


def build_tiny(folder: str, documents: list[str], tiny_config, seed: int, log=print) -> None:
    """A from-scratch GPT-2 and byte-level BPE tokenizer saved as a normal model folder.

    The tokenizer is trained on `documents` (the training split), the weights are
    random: what gets fine-tuned is then loaded back with from_pretrained, the
    same path a downloaded distilgpt2 takes.
    """
    tokenizer = train_tokenizer(documents, tiny_config.vocab_size, tiny_config.n_positions)
    save_random_gpt2(folder, tokenizer, seed, n_positions=tiny_config.n_positions, n_embd=tiny_config.n_embd,
                     n_layer=tiny_config.n_layer, n_head=tiny_config.n_head, resid_pdrop=tiny_config.dropout,
                     embd_pdrop=tiny_config.dropout, attn_pdrop=tiny_config.dropout)
    log(f"Built a tiny GPT-2 ({tiny_config.n_layer} layers x {tiny_config.n_embd}, vocabulary {len(tokenizer)}) "
        f"at {folder}.")


def train_tokenizer(documents: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE (GPT-2's scheme) of vocab_size tokens trained on `documents`,
    with GPT-2's <|endoftext|> as EOS (and BOS/UNK)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    eos = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(documents, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos,
                             model_max_length=max_length)


def save_random_gpt2(folder: str, tokenizer, seed: int, vocab_size: int | None = None, **shape) -> None:
    """A randomly initialised TFGPT2LMHeadModel of `shape` (GPT2Config fields) published with
    `tokenizer` as a model folder. vocab_size defaults to the tokenizer's."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size or len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **shape)
    tf.keras.utils.set_random_seed(seed)
    model = TFGPT2LMHeadModel(config)
    model.build_in_name_scope()

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    filesystem.publish_dir(folder, write)
