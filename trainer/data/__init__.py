"""Data: read documents, split train/validation, tokenize, pack or pad, shards, tf.data.

The path a corpus takes, one module a step:

    files --read.file_documents--> documents (str), streamed    read.py
          --keys.split_documents--> train / validation documents (before any packing)    keys.py
          --tokens.tokenize--> token ids per document, EOS appended    tokens.py
          --blocks.group_rows--> Blocks: [rows, block_size] int32, per packing group    blocks.py
          --shards.serialize_row--> TFRecord shards (trainer.prepare)    shards.py
          --pipeline.train_dataset | eval_dataset--> tf.data, static shapes    pipeline.py

This package imports only the foundation (settings, filesystem, errors): the
model, training and the run use it, never the other way round. Its callers use
the names below; the modules behind them are free to move.
"""

from trainer.data.blocks import (FIELDS, IGNORE_INDEX, Blocks, concat_blocks, data_fingerprint, decode_documents,
                                 decode_pairs, example_blocks, fit_example, group_rows, make_blocks, pack_blocks,
                                 pad_blocks)
from trainer.data.pipeline import (Shards, distributed_eval_data, distributed_train_data, epoch_order,
                                   eval_dataset, filled_rows, train_dataset, train_order)
from trainer.data.read import (BLANK_LINES, HORIZONTAL_SPACE, Documents, expand_files, iter_records,
                               file_documents, file_examples, load_documents, normalize_text, parse_normalize,
                               read_documents, read_examples)
from trainer.data.keys import split_documents
from trainer.data.tokens import encode_batch, encode_examples, tokenize, tokenize_examples, tokenizer_hash
