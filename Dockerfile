# syntax=docker/dockerfile:1
# The batch-predict image: `docker run IMAGE --input_file_patterns ... --model_dir ...`.
#
#   docker build -t batch-predict:gpu .                           # CUDA, through PyTorch's wheels
#   docker build --build-arg VARIANT=cpu -t batch-predict:cpu .   # CPU-only PyTorch wheels, no CUDA
#   docker build --build-arg WITH_TF=true -t batch-predict:gpu-tf .
#   docker build --build-arg WITH_RAY=true -t batch-predict:gpu-ray .  # for `--runner ray` (KubeRay)
#
# The base carries no CUDA toolkit: PyTorch's Linux wheels bring their CUDA libraries as
# packages, and the node brings the driver (the NVIDIA device plugin mounts it). Every
# framework version comes from constraints.txt, the versions the tests run with.
# The Python CI tests the suite on (tests/test_deploy.py checks that the two agree).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
FROM ${PYTHON_IMAGE}

# gpu or cpu: which PyTorch (and, with WITH_TF, which TensorFlow) wheels to install.
ARG VARIANT=gpu
# TensorFlow is large (and, for GPU, brings a second set of CUDA libraries): only on request.
ARG WITH_TF=false
# Ray (with Ray Data) only for images that run as Ray cluster nodes.
ARG WITH_RAY=false
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/batch-predict \
    PATH=/opt/batch-predict/bin:$PATH

# The source is bind-mounted, not copied, so the image holds the installed package only.
RUN --mount=type=bind,source=.,target=/tmp/src,rw \
    set -eu; \
    case "$VARIANT" in \
      gpu) tf_extra=tf-gpu ;; \
      cpu) tf_extra=tf ;; \
      *) echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    extras=torch,onnx,cloud,parquet; \
    if [ "$VARIANT" = gpu ]; then extras="$extras,nvimgcodec"; fi; \
    if [ "$WITH_TF" = true ]; then extras="$extras,$tf_extra"; fi; \
    if [ "$WITH_RAY" = true ]; then extras="$extras,ray"; fi; \
    python -m venv "$VIRTUAL_ENV"; \
    if [ "$VARIANT" = cpu ]; then \
      pip install -c /tmp/src/constraints.txt --index-url "$TORCH_CPU_INDEX" torch torchvision; \
    fi; \
    pip install -c /tmp/src/constraints.txt "/tmp/src[$extras]"; \
    batch-predict --help > /dev/null

# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 batch-predict \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/batch-predict \
       --shell /usr/sbin/nologin batch-predict
USER 10001:10001
WORKDIR /home/batch-predict

LABEL org.opencontainers.image.title="batch-predict" \
      org.opencontainers.image.description="Object-detection batch prediction over large image collections" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["batch-predict"]
CMD ["--help"]
