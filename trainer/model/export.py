"""Exports: the trained model as transformers TF weights and as PyTorch weights, each
folder published whole (COMPLETE.json last)."""

import os

import numpy as np

from trainer import faults, filesystem
from trainer.model.load import SAFETENSORS, pt_name


def export_tf(model, tokenizer, folder: str) -> None:
    """tf_model.h5 + config + tokenizer: loads with TFAutoModelForCausalLM and the TF pipeline.

    No PyTorch-format model.safetensors may sit here: TF's from_pretrained would
    try it first and hit the bug described at the top of this module."""
    def write(tmp):
        model.save_pretrained(tmp)
        faults.point("export_write")
        tokenizer.save_pretrained(tmp)
        faults.point("export_swap")
    filesystem.publish_dir(folder, write)
    faults.point("after_export")


def pytorch_state_dict(model) -> dict:
    """The model's weights under PyTorch names and layouts, tied weights written once."""
    from transformers.modeling_tf_pytorch_utils import apply_transpose

    state = {}
    for weight in model.weights:
        name, transpose = pt_name(weight)
        array = apply_transpose(transpose, weight.numpy(), pt_to_tf=False)
        # TF keeps the Conv1D biases of GPT-2 as [1, n]; PyTorch expects [n] and refuses the rest.
        if name.endswith(".bias") and array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        state[name] = np.ascontiguousarray(array)
    return state


def export_pytorch(model, tokenizer, folder: str) -> None:
    """config + tokenizer + PyTorch-format model.safetensors, for torch-based stacks."""
    from safetensors.numpy import save_file

    def write(tmp):
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__.removeprefix("TF")]
        config.pop("transformers_version", None)
        filesystem.write_json(os.path.join(tmp, "config.json"), config)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(pytorch_state_dict(model), os.path.join(tmp, SAFETENSORS), metadata={"format": "pt"})
    filesystem.publish_dir(folder, write)
