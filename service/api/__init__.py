"""The HTTP surface: one router per resource, plus the Open Inference Protocol (KServe V2) routes."""
