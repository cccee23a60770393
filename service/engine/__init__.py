"""The inference engine: one owner thread holds the backbone; requests queue per task and are served in batches."""

from service.engine.backbone import ResidentBackbone, load_backbone
from service.engine.engine import Completion, InferenceEngine, IntegrityReport, Prediction
from service.engine.generation import CompletionRequest

__all__ = [
    "Completion",
    "CompletionRequest",
    "InferenceEngine",
    "IntegrityReport",
    "Prediction",
    "ResidentBackbone",
    "load_backbone",
]
