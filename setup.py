"""tunewell: fine-tune GPT-2-family causal language models with TensorFlow.

The stack below was checked to install and train together on Python 3.11.
README.md ("Dependencies") says why each package is here.
"""

from setuptools import find_packages, setup

setup(
    name="tunewell",
    version="0.1.0",
    description="Fine-tune GPT-2-family causal language models with TensorFlow, correct by default.",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["trainer", "trainer.*", "configs", "configs.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "transformers>=4.57,<5",
        "tokenizers>=0.20",
        "safetensors>=0.4.5",
        "huggingface-hub>=0.26,<1.0",
        "datasets>=3.0",
        "google-cloud-storage>=2.18",
        "tensorboard==2.21.*",
        "absl-py>=2.1",
        "ml_collections>=0.1.1",
        "numpy>=1.26",
        "h5py>=3.10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "gcp-storage-emulator>=2026.7"],  # emulator: tests/gcs_server.py
        # Reading pytorch_model.bin checkpoints (torch pickles). The CPU build; on the
        # project's machines pip finds it offline in its find-links folder.
        "torch": ["torch==2.13.0"],
    },
)
