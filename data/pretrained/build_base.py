"""Build tunewell-base: the small GPT-2 that `make train-local` fine-tunes.

    python data/pretrained/build_base.py              # about 20 minutes on 2 cores
    python data/pretrained/build_base.py --check      # rerun and compare held-out loss

No hub is reachable here, so the project pretrains its own base model from text
that is openly licensed and reachable through a package registry (DEBS below):

- corpus: two Debian packages, fetched with `apt-get download` and checked by sha256:
  the reStructuredText sources of the Python 3.11 documentation (`python3.11-doc`
  3.11.2-6+deb12u8, PSF License; markup roles and directives removed, code blocks and
  tables dropped, one document per section) and WordNet 3.0's definitions and example
  sentences (`wordnet-base` 1:3.0-37, WordNet 3.0 license; 24 entries a document);
- held out: every 20th document of each source (5%), never trained on; its loss is the
  model's held-out loss in the model card;
- model: GPT-2, 4 layers x 256, 4 heads, 256 positions, a byte-level BPE of 8,192
  tokens trained on the training documents (trainer/model/tiny.py, the same code as
  model.bootstrap_tiny), trained by tunewell itself (python -m trainer.task) with
  explicit settings below, seed 42: 1,670 steps of 4,096 tokens (2 epochs);
- stored: the exported best weights cast to float16 (tf_model.h5, ~10 MB), which
  from_pretrained loads into float32 like any user checkpoint.

The model card (README.md beside the weights) is written from this run's figures.
`--check` rebuilds in a scratch folder and compares the held-out loss with the card's
(the run is seeded; bfloat16 on one CPU and float32 on another differ slightly, so the
check allows 1%).
"""

import argparse
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "data" / "pretrained" / "tunewell-base"

# Two Debian packages, pinned by version and sha256. The Python docs alone teach a
# technical register whose BPE splits everyday words badly ("rhubarb", "inherited"),
# so a fine-tune on everyday prose would spend its steps on spelling; WordNet's
# definitions and example sentences ("they heard the rumbling of thunder") cover
# everyday English vocabulary: 117,659 entries, 1.46M words of glosses.
DEBS = {
    "python3.11-doc": dict(
        version="3.11.2-6+deb12u8",
        sha256="50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        read="usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        licence="PSF License (Python Software Foundation License Version 2)"),
    "wordnet-base": dict(
        version="1:3.0-37",
        sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        read="usr/share/wordnet/data.{noun,verb,adj,adv}",
        licence="WordNet 3.0 license (permissive: use, copy, modify and distribute with the notice)"),
}
SOURCES = "usr/share/doc/python3.11/html/_sources"
WORDNET = "usr/share/wordnet"
HELD_OUT_EVERY = 20  # every 20th document of each source -> 5% held out
WORDNET_ENTRIES_PER_DOCUMENT = 24  # ~24 x 13 words: documents of ~300 words, like a docs section

# The training run. 4 x 256 with an 8k vocabulary is 5.3M parameters: 2.1M in the
# (tied) token embedding, 0.79M per layer (12 x 256^2), 66k positions. The corpus is
# 7,509 training documents, 12.8M characters (2.0M words), about 2.8M tokens an
# epoch: 835 steps of 16 rows of 256 (4,096 tokens). 2 epochs, 1,670 steps and
# 6.84M tokens, took 1,096 s at 6,241 tokens/s on 2 cores (measured: 4 x 256
# trains at 5,529 tokens/s, 2 x 256 at 7,856: halving the depth buys only 1.4x,
# because the 8k-way softmax and the embedding cost the same at any depth). The
# learning rate is tunewell's own from-scratch rule: 6e-4 x 768/256 x
# sqrt(4096/8192) = 1.27e-3; the best weights by held-out loss are exported.
SHAPE = dict(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=8192, dropout=0.1)
TRAIN_FLAGS = {
    "data.block_size": 256,
    "train.batch_size": 16,
    "train.epochs": 2,
    "optim.schedule": "cosine",
    "optim.warmup_ratio": 0.05,
    "optim.weight_decay": 0.1,
    "train.early_stopping_patience": 0,
    # The held-out documents are the validation files and the card's figure; a test split
    # taken from the training documents would train on 5% fewer and not reproduce it.
    "data.test_fraction": 0.0,
    "eval.review_examples": 0,
    "eval.num_prompts": 2,
    "preflight": "warn",
    "seed": 42,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where the model folder is written")
    parser.add_argument("--work_dir", default="", help="scratch folder (default: a temporary one)")
    parser.add_argument("--debs", default="", help="a folder holding the two .deb files (default: apt-get download)")
    parser.add_argument("--max_steps", type=int, default=0, help="cap the training (smoke runs only)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild in the scratch folder and compare the held-out loss with --out's card")
    args = parser.parse_args()
    work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="tunewell-base-"))
    work.mkdir(parents=True, exist_ok=True)

    roots = {name: extract(fetch_deb(name, pathlib.Path(args.debs) if args.debs else work), work)
             for name in DEBS}
    train_docs, held_out_docs = split_documents(roots)
    write_jsonl(work / "train.jsonl", train_docs)
    write_jsonl(work / "heldout.jsonl", held_out_docs)
    print(f"corpus: {len(train_docs)} training documents, {len(held_out_docs)} held out", flush=True)

    run_dir = work / "run"
    train(work, run_dir, args.max_steps)
    report = json.loads((run_dir / "report.json").read_text())
    out = work / "model" if args.check else pathlib.Path(args.out)
    held_out_loss = save_float16(run_dir / "export", out, work / "heldout.jsonl")
    facts = run_facts(report, train_docs, held_out_docs, held_out_loss)
    if args.check:
        card = json.loads((pathlib.Path(args.out) / "build.json").read_text())
        change = held_out_loss / card["held_out_loss"] - 1
        print(f"held-out loss {held_out_loss:.4f} against the card's {card['held_out_loss']:.4f} "
              f"({change:+.2%})")
        sys.exit(0 if abs(change) <= 0.01 else 1)
    (out / "build.json").write_text(json.dumps(facts, indent=2) + "\n")
    write_card(out, facts)
    print(json.dumps(facts, indent=2))


def fetch_deb(name: str, folder: pathlib.Path) -> pathlib.Path:
    found = sorted(folder.glob(f"{name}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", f"{name}={DEBS[name]['version']}"], cwd=folder, check=True)
        found = sorted(folder.glob(f"{name}_*.deb"))
    return found[0]


def extract(deb: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    name = deb.name.split("_")[0]
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != DEBS[name]["sha256"]:
        sys.exit(f"error: {deb} has sha256 {digest}, not {DEBS[name]['sha256']} ({name} "
                 f"{DEBS[name]['version']}); the corpus would differ from the card's")
    root = work / f"deb-{name}"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


# ---------------------------------------------------------------- cleaning reST
_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")  # :func:`len` -> len
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{0,2}")  # `text <url>`_ -> text
_PLAIN_REF = re.compile(r"`([^`]+)`_{0,2}")
_SUBST = re.compile(r"\|(\w+)\|")
_UNDERLINE = re.compile(r"^([=\-~^\"'*#+`:.])\1{2,}\s*$")


def _role_text(match: re.Match) -> str:
    text = match.group(1).lstrip("!~")
    named = re.match(r"(.+?)\s*<[^>]*>$", text)  # :ref:`the tutorial <tut-intro>` -> the tutorial
    return named.group(1) if named else text


def clean_inline(text: str) -> str:
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _PLAIN_REF.sub(r"\1", text)
    text = _SUBST.sub(r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*", r"\1", text)
    text = text.replace("\\", "")
    text = re.sub(r"::$", ":", text)
    return re.sub(r"\s+", " ", text).strip()


def sections_of(rst: str) -> list[str]:
    """Prose sections of one reST file: headings start a section; paragraphs whose first
    line is indented (code, directive bodies, quotes), directives, comments, tables and
    interactive sessions are dropped; each kept paragraph is reflowed to one line."""
    sections, current = [], []
    for block in re.split(r"\n\s*\n", rst):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if any(_UNDERLINE.match(line) for line in lines) and len(lines) <= 3:  # a heading
            if current:
                sections.append("\n\n".join(current))
            current = []
            continue
        first = lines[0]
        if (first[:1].isspace() or first.startswith((".. ", "..\t", ">>>", "+-", "==", ":", "|"))
                or first.rstrip() == ".."):
            continue
        paragraph = clean_inline(" ".join(line.strip() for line in lines))
        letters = sum(c.isalpha() for c in paragraph)
        if len(paragraph) >= 40 and letters >= 0.6 * len(paragraph):
            current.append(paragraph)
    if current:
        sections.append("\n\n".join(current))
    return sections


# ---------------------------------------------------------------- WordNet entries
def wordnet_entry(line: str) -> str:
    """One synset of a WordNet data file as a line of prose:
    `... 03 river 0 ... | a large natural stream of water (larger than a creek); "the river was
    navigable for 50 miles"` -> `river: a large natural stream of water (larger than a creek).
    The river was navigable for 50 miles.`"""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    lemma = re.sub(r"\(\w+\)$", "", fields[4]).replace("_", " ")  # beautiful(a) -> beautiful
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = gloss.split('"')[0].strip().rstrip(";").strip()
    sentences = [f"{lemma}: {definition}."]
    for example in examples:
        example = example.strip()
        if example:
            sentences.append(example[0].upper() + example[1:] + ("" if example[-1] in ".!?" else "."))
    return " ".join(sentences)


def wordnet_documents(root: pathlib.Path) -> list[str]:
    """Consecutive entries of each data file (ordered by topic, e.g. noun.animal) in
    documents of WORDNET_ENTRIES_PER_DOCUMENT lines; the licence header is skipped."""
    documents = []
    for part in ("noun", "verb", "adj", "adv"):
        lines = [line for line in (root / WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines()
                 if line and not line.startswith("  ")]
        entries = [wordnet_entry(line) for line in lines]
        documents.extend("\n".join(entries[i:i + WORDNET_ENTRIES_PER_DOCUMENT])
                         for i in range(0, len(entries), WORDNET_ENTRIES_PER_DOCUMENT))
    return documents


def split_documents(roots: dict) -> tuple[list[str], list[str]]:
    """The docs' sections in path order, then WordNet's documents; every HELD_OUT_EVERY-th
    document of each source is held out."""
    sections = []
    for path in sorted((roots["python3.11-doc"] / SOURCES).rglob("*.rst.txt")):
        sections.extend(s for s in sections_of(path.read_text(encoding="utf-8")) if len(s) >= 200)
    train, held_out = [], []
    for documents in (sections, wordnet_documents(roots["wordnet-base"])):
        held_out += documents[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
        train += [d for i, d in enumerate(documents) if (i + 1) % HELD_OUT_EVERY]
    return train, held_out


def write_jsonl(path: pathlib.Path, documents: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- training
def train(work: pathlib.Path, run_dir: pathlib.Path, max_steps: int) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    flags = dict(TRAIN_FLAGS)
    flags.update({
        "output_dir": str(run_dir),
        "data.train_files": str(work / "train.jsonl"),
        "data.validation_files": str(work / "heldout.jsonl"),
        "data.cache_dir": "",
        "model.name_or_path": str(work / "random-init"),
        "model.bootstrap_tiny": True,
    })
    flags.update({f"model.tiny.{key}": value for key, value in SHAPE.items()})
    if max_steps:
        flags["train.max_steps"] = max_steps
    shutil.rmtree(work / "random-init", ignore_errors=True)
    command = [sys.executable, "-m", "trainer.task", "--config=configs/default.py"]
    command += [f"--config.{key}={value}" for key, value in flags.items()]
    print(" ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def save_float16(export_dir: pathlib.Path, out: pathlib.Path, held_out_file: pathlib.Path) -> float:
    """The exported weights cast to float16 at `out`, loaded back (into float32, as any
    user checkpoint) and scored on the held-out sections; returns that loss."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    from transformers import AutoTokenizer, TFAutoModelForCausalLM

    model = TFAutoModelForCausalLM.from_pretrained(str(export_dir))
    for weight in model.weights:
        weight.assign(weight.numpy().astype(np.float16).astype(np.float32))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    _to_float16_h5(tmp / "tf_model.h5")
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        for name in ("README.md", "build.json"):  # rewritten by the caller
            if (out / name).exists() and not (tmp / name).exists():
                shutil.copy(out / name, tmp / name)
        shutil.rmtree(out)
    tmp.rename(out)

    reloaded = TFAutoModelForCausalLM.from_pretrained(str(out))
    assert all(w.dtype == tf.float32 for w in reloaded.weights)
    return held_out_loss(reloaded, tokenizer, held_out_file, SHAPE["n_positions"])


def _to_float16_h5(path: pathlib.Path) -> None:
    """Rewrite a Keras h5 file with every float32 dataset stored as float16 (half the
    bytes); attributes (the layer and weight names Keras reads) are copied as they are."""
    import h5py
    import numpy as np

    half = path.with_suffix(".half.h5")

    def copy(src, dst):
        dst.attrs.update(dict(src.attrs))
        for name, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name))
            else:
                data = item[()]
                if data.dtype == np.float32:
                    data = data.astype(np.float16)
                dst.create_dataset(name, data=data).attrs.update(dict(item.attrs))

    with h5py.File(path, "r") as src, h5py.File(half, "w") as dst:
        copy(src, dst)
    os.replace(half, path)


def held_out_loss(model, tokenizer, path: pathlib.Path, block: int) -> float:
    """Mean next-token loss (nats) over the held-out sections packed as the trainer packs
    them: each followed by EOS, joined, cut into full blocks of `block` tokens."""
    import numpy as np
    import tensorflow as tf

    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        ids.extend(tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id])
    rows = np.array(ids[: len(ids) // block * block], dtype=np.int32).reshape(-1, block)
    total, count = 0.0, 0
    for start in range(0, len(rows), 16):
        batch = tf.constant(rows[start:start + 16])
        logits = model(batch, training=False).logits[:, :-1]
        losses = tf.keras.losses.sparse_categorical_crossentropy(batch[:, 1:], logits, from_logits=True)
        total += float(tf.reduce_sum(losses))
        count += int(tf.size(losses))
    return total / count


# ---------------------------------------------------------------- the card
def run_facts(report: dict, train_docs, held_out_docs, held_out_loss: float) -> dict:
    return {
        "corpus": {name: {k: deb[k] for k in ("version", "sha256", "read", "licence")} for name, deb in DEBS.items()},
        "training_documents": len(train_docs),
        "held_out_documents": len(held_out_docs),
        "training_characters": sum(map(len, train_docs)),
        "shape": SHAPE,
        "settings": {k: v for k, v in TRAIN_FLAGS.items() if k.startswith(("data.", "train.", "optim.", "seed"))},
        "report": {key: report.get(key) for key in (
            "steps", "best_step", "train_tokens", "tokens_per_sec", "train_seconds", "initial_val_loss",
            "best_val_loss", "learning_rate", "distribution", "timing")},
        "held_out_loss": round(held_out_loss, 4),
        "held_out_perplexity": round(math.exp(held_out_loss), 2),
    }


def write_card(out: pathlib.Path, facts: dict) -> None:
    report = facts["report"]
    corpus_rows = "\n".join(
        f"| corpus | Debian `{name}` {deb['version']}, `{deb['read']}` (sha256 `{deb['sha256'][:12]}...`); "
        f"licence: {deb['licence']}, see `/usr/share/doc/{name}/copyright` in the package |"
        for name, deb in facts["corpus"].items())
    card = f"""# tunewell-base: a 5.3M-parameter GPT-2 pretrained here

The base model `make train-local` fine-tunes. No model hub is reachable where tunewell
is built and tested, so the project pretrains its own, small enough to ship (float16
weights, {os.path.getsize(out / 'tf_model.h5') / 1e6:.1f} MB) and loaded exactly as a
user's distilgpt2: `from_pretrained` reads the float16 file into float32 weights.

| | |
|---|---|
| architecture | GPT-2: {SHAPE['n_layer']} layers x {SHAPE['n_embd']}, {SHAPE['n_head']} heads, {SHAPE['n_positions']} positions, dropout {SHAPE['dropout']} |
| tokenizer | byte-level BPE, {SHAPE['vocab_size']:,} tokens, trained on the training sections; EOS `<|endoftext|>` |
{corpus_rows}
| cleaning | docs: markup roles and directives removed, code, tables and sessions dropped, one document per section; WordNet: each synset as `lemma: definition. Example sentences.`, {WORDNET_ENTRIES_PER_DOCUMENT} consecutive synsets a document |
| training text | {facts['training_documents']:,} documents, {facts['training_characters']:,} characters |
| held out | {facts['held_out_documents']:,} documents (every {HELD_OUT_EVERY}th of each source), never trained on |
| training | `{json.dumps(facts['settings'])}` |
| run | {report['steps']:,} steps, {report['train_tokens']:,} tokens, learning rate {report['learning_rate']:.3g} (tunewell's from-scratch rule), best at step {report['best_step']:,}; {report['train_seconds'] / 60:.0f} min at {report['tokens_per_sec']:,.0f} tokens/s ({report['distribution']['precision']}) |
| held-out loss | **{facts['held_out_loss']:.4f}** nats/token (perplexity {facts['held_out_perplexity']:.1f}), float16 weights loaded into float32 |

Rebuild with `python data/pretrained/build_base.py` (about 25 minutes on 2 CPU cores: 21 of training);
`--check` rebuilds in a scratch folder and compares the held-out loss with this card's
(within 1%). `build.json` holds these figures and the run's report.

It writes technical English about a programming language and dictionary-style English
(definitions and short example sentences), and knows little else: it is a base for
showing what fine-tuning does, not a model to use on its own.
"""
    (out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
