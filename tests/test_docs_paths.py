"""Every repository path the docs and build files name exists: a reader who follows
"TPU: deploy/Dockerfile.tpu" (issue 26: no such file) must find what is promised."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", "deploy/README.md", "Makefile", "deploy/Dockerfile", ".ci/run", "setup.py"]
# A path into the repository's own folders, ending in a file name with an extension.
PATH = re.compile(r"(?<![\w./$-])((?:trainer|configs|deploy|bench|tests|data)/[\w./-]*\w\.\w+|deploy/Dockerfile[\w.]*)")
# Placeholders for a user's own file.
NOT_OURS = ("configs/NAME",)


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for document in DOCUMENTS:
        for number, line in enumerate(open(os.path.join(REPO, document)), 1):
            for path in PATH.findall(line):
                path = path.rstrip(".")
                if not path.startswith(NOT_OURS) and "*" not in path and not os.path.exists(os.path.join(REPO, path)):
                    missing.append(f"{document}:{number}: {path}")
    assert not missing, "\n".join(missing)
