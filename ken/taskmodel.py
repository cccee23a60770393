"""Building a task model (backbone + the task's own head) around a shared backbone module.

A subnetwork's stored config comes from whoever made the file, so it is never used as a config:
the task model is built from the *backbone's* config, with only the fields a head needs taken from
the subnetwork (labels, problem type, classifier dropout, a pad token id the backbone lacks).
Architecture fields must equal the backbone's when present, fields that select code (attention
kernels, remote code, quantizers) are refused, and everything else is ignored.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from ken.errors import KenError
from ken.pooling import Pooling, pool
from ken.subnetwork import SubnetworkInfo

#: One label distribution per input (text classification).
SEQUENCE_CLASSIFICATION = "sequence-classification"
#: One label distribution per token (NER-style tagging).
TOKEN_CLASSIFICATION = "token-classification"
#: One relevance score per text pair (a cross-encoder: sequence classification over pair inputs).
PAIR_SCORING = "pair-scoring"
#: One pooled vector per input (a sentence embedding); the task has no head.
FEATURE_EXTRACTION = "feature-extraction"
#: Text continued token by token (a causal LM; the output layer is usually tied to the embeddings).
TEXT_GENERATION = "text-generation"
TASK_TYPES = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, PAIR_SCORING, FEATURE_EXTRACTION, TEXT_GENERATION)

AUTO_CLASSES = {
    SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
    TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
    PAIR_SCORING: AutoModelForSequenceClassification,
    TEXT_GENERATION: AutoModelForCausalLM,
}

#: Fields that shape the network; a subnetwork made for another shape is refused by name.
ARCHITECTURE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_act",
    "position_embedding_type",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "n_positions",
    "dim",
    "n_layers",
    "n_heads",
    "hidden_dim",
    "d_model",
)
#: Fields that would make transformers run other code than the backbone's (or download some).
CODE_FIELDS = ("auto_map", "trust_remote_code", "custom_pipelines", "quantization_config")
ATTENTION_FIELDS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")
#: Attention implementations that are part of transformers itself (no kernel is fetched for them).
BUILTIN_ATTENTION = ("eager", "sdpa")
#: Head fields taken from the subnetwork: a dropout probability each (inactive at inference).
DROPOUT_FIELDS = ("classifier_dropout", "seq_classif_dropout")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _fail(field: str, problem: str) -> KenError:
    return KenError(f"subnetwork config field {field!r}: {problem}")


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (``32`` is not ``"32"``, ``True`` is not ``1``)."""
    return type(a) is type(b) and a == b


def task_labels(info: SubnetworkInfo) -> list[str]:
    """The task's label names by class index: the config's ``id2label``, else the metadata's.

    Keys must be the class indices ``0 .. n-1`` without gaps, values strings. An embedding or a
    text-generation task has none.
    """
    if info.task_type in (FEATURE_EXTRACTION, TEXT_GENERATION):
        return []
    raw = info.config.get("id2label", info.id2label)
    if not isinstance(raw, dict):
        raise _fail("id2label", f"must be an object of class index -> label, got {type(raw).__name__}")
    labels: dict[int, str] = {}
    for key, label in raw.items():
        index = _class_index(key)
        if index is None or not isinstance(label, str):
            raise _fail("id2label", f"entry {key!r}: {label!r} must map a class index to a label string")
        labels[index] = label
    if sorted(labels) != list(range(len(labels))):
        raise _fail("id2label", f"class indices must be 0..{len(labels) - 1} without gaps, got {sorted(labels)[:8]}")
    return [labels[i] for i in range(len(labels))]


def _class_index(key: Any) -> int | None:
    """A class index as JSON (a digit string) or as an in-memory config (an int) holds it."""
    if type(key) is int and key >= 0:
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9:
        return int(key)
    return None


def task_config(info: SubnetworkInfo, backbone_config: PretrainedConfig) -> PretrainedConfig:
    """The task model's config: a copy of the backbone's, with the subnetwork's head fields checked and set."""
    uploaded = info.config
    reference = backbone_config.to_dict()
    for field in ARCHITECTURE_FIELDS:
        if field in uploaded and field in reference and not _same_value(uploaded[field], reference[field]):
            raise _fail(field, f"is {uploaded[field]!r}, the backbone's is {reference[field]!r}: not made for it")
    for field in CODE_FIELDS:
        if uploaded.get(field) not in (None, False, {}, []):
            raise _fail(field, "selects code to run or download; the service runs only the backbone's own code")
    for field in ATTENTION_FIELDS:
        if uploaded.get(field) not in (None, *BUILTIN_ATTENTION):
            raise _fail(field, f"{uploaded[field]!r} is not allowed; the backbone's attention implementation is used")

    config = copy.deepcopy(backbone_config)
    labels = task_labels(info)
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    problem_type = uploaded.get("problem_type")
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise _fail("problem_type", f"{problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
    config.problem_type = problem_type
    for field in DROPOUT_FIELDS:
        value = uploaded.get(field)
        if value is None:
            continue
        if type(value) not in (int, float) or not 0 <= value < 1:
            raise _fail(field, f"{value!r} is not a probability in [0, 1)")
        setattr(config, field, value)
    _set_pad_token_id(config, uploaded.get("pad_token_id"))
    return config


def _set_pad_token_id(config: PretrainedConfig, value: Any) -> None:
    """Sequence classifiers of decoder models find each input's last token by it; the backbone's wins."""
    if value is None or _same_value(value, getattr(config, "pad_token_id", None)):
        return
    if getattr(config, "pad_token_id", None) is not None:
        raise _fail("pad_token_id", f"is {value!r}, the backbone's is {config.pad_token_id!r}")
    vocab_size = getattr(config, "vocab_size", None)
    if type(value) is not int or not 0 <= value < (vocab_size or 0):
        raise _fail("pad_token_id", f"{value!r} is not a token id of the backbone's vocabulary (0..{vocab_size})")
    config.pad_token_id = value


def attach_head(backbone: PreTrainedModel, info: SubnetworkInfo, head: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A task model whose base model *is* ``backbone`` (shared, not copied) and whose head is ``head``.

    ``head`` must hold exactly the head module's tensors, by name and shape: a name under the base
    model (which would replace a backbone weight) or a missing tensor (a random head) is an error.
    The head tensors are copied into fresh (aligned) tensors of the backbone's dtype and device:
    tensors parsed from bytes may sit at any offset, and CPU kernels round the last bit of a
    result differently for misaligned data.
    """
    if info.task_type == FEATURE_EXTRACTION:
        if head:
            raise KenError(f"a {FEATURE_EXTRACTION} task has no head, but the subnetwork has {sorted(head)[0]!r}")
        return backbone
    auto_class = AUTO_CLASSES.get(info.task_type)
    if auto_class is None:
        raise KenError(f"task type {info.task_type!r} is not supported; supported: {', '.join(TASK_TYPES)}")
    parameter = next(backbone.parameters())
    with torch.device("meta"):
        model = auto_class.from_config(task_config(info, backbone.config))
    prefix = model.base_model_prefix
    if not hasattr(model, prefix):
        raise KenError(f"{type(model).__name__} has no base model attribute {prefix!r}")
    base_parameters = {id(p) for p in getattr(model, prefix).parameters()}  # tied output layers included
    expected = {
        name: tuple(t.shape)
        for name, t in model.state_dict(keep_vars=True).items()
        if not name.startswith(f"{prefix}.") and id(t) not in base_parameters
    }
    check_head_tensors(head, expected, prefix, backbone_names=set(backbone.state_dict()))
    setattr(model, prefix, backbone)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # an output layer tied to the input embeddings is the backbone's, delta included
    tensors = {name: t.to(device=parameter.device, dtype=parameter.dtype, copy=True) for name, t in head.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    unset = [name for name, t in model.state_dict().items() if t.is_meta]
    if unset:
        raise KenError(f"the subnetwork's head lacks {unset[0]!r} (and {len(unset) - 1} more)")
    return model.eval()


def check_head_tensors(
    head: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], prefix: str, *, backbone_names: set[str]
) -> None:
    """``head`` has exactly the ``expected`` names and shapes, and none of them is a backbone tensor."""
    for name, tensor in head.items():
        if name.startswith(f"{prefix}.") or name in backbone_names:
            raise KenError(f"head tensor {name!r} names a backbone tensor; a head may only hold the head's own")
        if name not in expected:
            raise KenError(f"head tensor {name!r} does not belong to the head (it has {', '.join(sorted(expected))})")
        if tuple(tensor.shape) != expected[name]:
            raise KenError(
                f"head tensor {name!r} has shape {list(tensor.shape)}, the head needs {list(expected[name])}"
            )
    missing = sorted(set(expected) - set(head))
    if missing:
        raise KenError(f"the subnetwork's head lacks {missing[0]!r} (and {len(missing) - 1} more)")


def task_pooling(info: SubnetworkInfo) -> Pooling:
    """An embedding task's pooling: as recorded, else mean pooling without normalisation."""
    return info.pooling if info.pooling is not None else Pooling()


def task_outputs(model: PreTrainedModel, info: SubnetworkInfo, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One forward pass of a task model over a padded batch: per input, what its task type answers.

    Float32 on the CPU: classification logits ``[labels]`` (sequence classification, pair scoring),
    per-token logits ``[tokens, labels]`` cut to the input's own tokens (token classification), or
    the pooled embedding ``[hidden]`` (feature extraction), not yet normalised: whether to normalise
    is the caller's choice (the task's pooling gives the default).
    """
    output = model(**inputs)
    if info.task_type == FEATURE_EXTRACTION:
        vectors = pool(output.last_hidden_state, inputs["attention_mask"], task_pooling(info).mode)
        return list(vectors.float().cpu().unbind(0))
    logits = output.logits.float().cpu()
    if info.task_type == TOKEN_CLASSIFICATION:
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [row[:length] for row, length in zip(logits.unbind(0), lengths, strict=True)]
    return list(logits.unbind(0))
