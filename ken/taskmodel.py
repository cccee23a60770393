"""Building a task model (backbone + the task's own head) around a shared backbone module."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from ken.errors import KenError
from ken.subnetwork import SubnetworkInfo

AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
}


def task_config(info: SubnetworkInfo) -> PretrainedConfig:
    """The fine-tuned model's configuration, as stored in the subnetwork."""
    config = dict(info.config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise KenError("the subnetwork's config has no model_type: extract it from a Hugging Face folder")
    return AutoConfig.for_model(model_type, **config)


def attach_head(backbone: PreTrainedModel, info: SubnetworkInfo, head: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A task model whose base model *is* ``backbone`` (shared, not copied) and whose head is ``head``.

    The head tensors are copied into fresh (aligned) tensors of the backbone's dtype and device:
    tensors parsed from bytes may sit at any offset, and CPU kernels round the last bit of a
    result differently for misaligned data. Any tensor of the task model left unset by ``head`` is
    an error, so a task can never run with a random head.
    """
    auto_class = AUTO_CLASSES.get(info.task_type)
    if auto_class is None:
        raise KenError(f"task type {info.task_type!r} is not supported; supported: {', '.join(AUTO_CLASSES)}")
    parameter = next(backbone.parameters())
    with torch.device("meta"):
        model = auto_class.from_config(task_config(info))
    prefix = model.base_model_prefix
    if not hasattr(model, prefix):
        raise KenError(f"{type(model).__name__} has no base model attribute {prefix!r}")
    setattr(model, prefix, backbone)
    tensors = {name: t.to(device=parameter.device, dtype=parameter.dtype, copy=True) for name, t in head.items()}
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise KenError(f"head tensor {result.unexpected_keys[0]!r} does not belong to {type(model).__name__}")
    unset = [name for name, t in model.state_dict().items() if t.is_meta]
    if unset:
        raise KenError(f"the subnetwork's head lacks {unset[0]!r} (and {len(unset) - 1} more)")
    return model.eval()
