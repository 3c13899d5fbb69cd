"""Generate text with a fine-tuned model.

    python -m trainer.generate --model_dir=runs/local/export --prompt="The river"
    python -m trainer.generate --model_dir=... --prompt=... --num_beams=4 --no_repeat_ngram_size=3
    python -m trainer.generate --model_dir=... --prompt=... --do_sample --top_p=0.9 --temperature=0.8

Greedy decoding unless --do_sample or --num_beams > 1.
"""

import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from trainer.errors import UserError

flags.DEFINE_string("model_dir", None, "Model folder, e.g. runs/local/export.")
flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat the flag for several prompts.")
flags.DEFINE_integer("max_new_tokens", 60, "Tokens to generate per prompt.")
flags.DEFINE_bool("do_sample", False, "Sample instead of greedy/beam search.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature (with --do_sample).")
flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens; 0 = off.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: smallest token set with this probability mass.")
flags.DEFINE_integer("num_beams", 1, "Beam search width; 1 = no beam search.")
flags.DEFINE_float("repetition_penalty", 1.0, "Penalty > 1 discourages repeating earlier tokens.")
flags.DEFINE_integer("no_repeat_ngram_size", 0, "Forbid repeating any n-gram of this size; 0 = off.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from trainer import model as model_lib  # after flag parsing: --help stays fast

    options = {"do_sample": FLAGS.do_sample, "num_beams": FLAGS.num_beams,
               "repetition_penalty": FLAGS.repetition_penalty,
               "no_repeat_ngram_size": FLAGS.no_repeat_ngram_size}
    if FLAGS.do_sample:
        options.update(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    try:
        model, _ = model_lib.load_model(FLAGS.model_dir, log=lambda msg: print(msg, file=sys.stderr))
        tokenizer = model_lib.load_tokenizer(FLAGS.model_dir)
        for prompt in FLAGS.prompt:
            text = model_lib.generate(model, tokenizer, prompt, FLAGS.max_new_tokens, FLAGS.seed, **options)
            print(f"{prompt}{text}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flags_as_required(["model_dir", "prompt"])
    app.run(main)
