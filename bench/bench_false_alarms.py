"""How often do the doctor and the run monitors warn on ordinary data?

    .venv/bin/python bench/bench_false_alarms.py [--steps 300] [--out bench/false_alarms.json]

Builds realistic corpora from real text already on this machine (nothing is
downloaded): the docstrings of Python's standard library (technical prose),
the source of its functions (code), the long descriptions of the installed
packages (READMEs: markdown prose with their own boilerplate), and the
embedded sample. For each it runs the doctor's pre-flight with default
settings and a real short training (a tiny GPT-2 built on that corpus), and
lists every warning and error with the monitor messages raised during the run.
A healthy run on ordinary data should raise none; the ones it does raise are
printed so a person can judge them.
"""

import argparse
import ast
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)


def stdlib_files():
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    return sorted(p for p in glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "*", "*.py"))
                  if "/test" not in p and "site-packages" not in p)


def docstring_corpus(limit=6000):
    docs = []
    for path in stdlib_files():
        try:
            tree = ast.parse(open(path, encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)):
                text = ast.get_docstring(node)
                if text and len(text.split()) >= 8:
                    docs.append(" ".join(text.split()))
    return docs[:limit]


def code_corpus(limit=4000):
    docs = []
    for path in stdlib_files():
        try:
            source = open(path, encoding="utf-8").read()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                segment = ast.get_source_segment(source, node)
                if segment and 3 <= segment.count("\n") <= 60:
                    docs.append(segment)
    return docs[:limit]


def readme_corpus(limit=6000):
    from importlib import metadata

    docs = []
    for dist in metadata.distributions():
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        body = body or dist.metadata.get("Description", "") or ""
        for paragraph in body.split("\n\n"):
            paragraph = " ".join(paragraph.split())
            if len(paragraph.split()) >= 12:
                docs.append(paragraph)
    return docs[:limit]


def sample_corpus():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample", "corpus.jsonl")
    return [json.loads(line)["text"] for line in open(path)]


def run_one(name, docs, workdir, steps):
    from configs import local
    from trainer.run import train

    corpus = os.path.join(workdir, f"{name}.jsonl")
    with open(corpus, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    config = local.get_config()
    config.output_dir = os.path.join(workdir, f"run-{name}")
    config.data.train_files = corpus
    config.model.name_or_path = os.path.join(workdir, f"model-{name}")
    config.train.max_steps = steps
    messages = []
    started = time.time()
    report = train.train_and_evaluate(config, log=messages.append)
    doctor = json.load(open(os.path.join(config.output_dir, "doctor.json")))["findings"]
    alarms = [f"{f['severity']}: [{f['check']}] {f['figure']}" for f in doctor if f["severity"] != "info"]
    monitors = [m for m in messages if m.startswith("Monitor at step")]
    return {"corpus": name, "documents": len(docs), "train_tokens": report["data"]["train"]["tokens"],
            "doctor_warnings": sum(a.startswith("warning") for a in alarms),
            "doctor_errors": sum(a.startswith("error") for a in alarms), "doctor": alarms,
            "monitors": monitors, "diagnosis": report["diagnosis"][0]["label"],
            "val_loss": [report["initial_val_loss"], report["best_val_loss"]], "seconds": time.time() - started}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "false_alarms.json"))
    args = parser.parse_args()
    corpora = {"stdlib-docstrings": docstring_corpus(), "stdlib-code": code_corpus(),
               "package-readmes": readme_corpus(), "embedded-sample": sample_corpus()}
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, docs in corpora.items():
            results.append(run_one(name, docs, workdir, args.steps))
            print(json.dumps(results[-1], indent=2), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print("\n| corpus | documents | tokens | doctor warnings | doctor errors | monitors | diagnosis |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['corpus']} | {r['documents']:,} | {r['train_tokens']:,} | {r['doctor_warnings']} | "
              f"{r['doctor_errors']} | {len(r['monitors'])} | {r['diagnosis']} |")


if __name__ == "__main__":
    main()
