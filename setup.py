"""tunewell: fine-tune GPT-2-family causal language models with TensorFlow.

The stack below was checked to install and train together on Python 3.11.
README.md ("Dependencies") says why each package is here.
"""

import os

from setuptools import find_packages, setup

# Container images install TensorFlow themselves (tensorflow[and-cuda] 2.21, or
# tensorflow-tpu 2.20 with libtpu, which pip must not pair with a second `tensorflow`
# distribution): deploy/Dockerfile sets this while installing the rest.
TENSORFLOW = [] if os.environ.get("TUNEWELL_TENSORFLOW_PROVIDED") == "1" else [
    # 2.21, and 2.20 for TPU images (tensorflow-tpu on PyPI stops at 2.20); tf-keras pins the
    # matching TensorFlow itself, so pip cannot pair the wrong two.
    "tensorflow>=2.20,<2.22",
    "tf-keras>=2.20,<2.22",
]

setup(
    name="tunewell",
    version="0.1.0",
    description="Fine-tune GPT-2-family causal language models with TensorFlow, correct by default.",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["trainer", "trainer.*", "configs", "configs.*", "deploy", "deploy.*"]),
    install_requires=TENSORFLOW + [
        "transformers>=4.57,<5",
        "tokenizers>=0.20",
        "safetensors>=0.4.5",
        "huggingface-hub>=0.26,<1.0",
        "datasets>=3.0",
        "google-cloud-storage>=2.18",
        "tensorboard>=2.20,<2.22",
        "absl-py>=2.1",
        "ml_collections>=0.1.1",
        "numpy>=1.26",
        "h5py>=3.10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "sacrebleu>=2.4",
        "rouge-score>=0.1.2",
        # trainer.prepare is a Beam pipeline (DirectRunner here, Dataflow on Google Cloud);
        # [gcp] brings Dataflow's runner and gs:// IO. 2.77 resolves beside TF 2.21 (protobuf 6.33).
        "apache-beam[gcp]>=2.77,<2.78",
    ],
    extras_require={
        # Vertex AI launcher (deploy/vertex.py): its specs are checked against this library's v1 protos.
        "deploy": ["google-cloud-aiplatform>=1.70"],
        # emulator: tests/gcs_server.py; aiplatform: tests/test_deploy_vertex.py parses specs with it;
        # import-linter: tests/test_layers.py checks the layers of setup.cfg's contracts.
        "test": ["pytest>=8", "gcp-storage-emulator>=2026.7", "google-cloud-aiplatform>=1.70", "import-linter>=2.1"],
        # Reading pytorch_model.bin checkpoints (torch pickles). The CPU build; on the
        # project's machines pip finds it offline in its find-links folder.
        "torch": ["torch==2.13.0"],
    },
)
