"""Model: load and verify checkpoints, the tokenizer and added tokens, tiny models built
here, exports, and the sampler.

    load.py       choose_weights -> read -> load_model (every weight checked against its file)
    tokenizer.py  load_tokenizer, add_tokens, embeddings grown to match
    tiny.py       build_tiny: a byte-level BPE and a random GPT-2, saved as any checkpoint
    export.py     export_tf, export_pytorch
    sampler.py    generate, sample_generations, complete (compiled key/value-cache decoding)
    serving.py    export_serving: a SavedModel with a generation signature, TensorFlow alone loads it
    documents.py  packed rows whose documents attend only to themselves (position ids, mask)

This package imports only the foundation: training, evaluation, the doctor and
the run use it. Its callers use the names below.
"""

from trainer.model.export import export_pytorch, export_tf, pytorch_state_dict
from trainer.model.load import (LoadedFrom, canonical_name, choose_weights, count_parameters, load_config,
                                load_model, pt_array_for_tf, pt_name, resolve_model_dir)
from trainer.model.sampler import complete, generate, sample_generations
from trainer.model.serving import export_serving
from trainer.model.tiny import build_tiny, save_random_gpt2, train_tokenizer
from trainer.model.tokenizer import (add_tokens, load_tokenizer, match_vocabulary, read_new_tokens,
                                     resize_embeddings_with_mean)
