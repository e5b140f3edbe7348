# medseg image: CPU PyTorch by default.
# For a CUDA build, pass the wheel index and version of your CUDA runtime, e.g.
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" \
#                --build-arg TORCH_INDEX="https://download.pytorch.org/whl/cu128" -t medseg:cuda .
# and run with `docker run --gpus all medseg:cuda ...` (needs the NVIDIA container toolkit).
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/medseg
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml constraints.txt README.md ./
COPY medseg ./medseg
COPY configs ./configs
COPY pipelines ./pipelines
RUN pip install -c constraints.txt .

# A fixed numeric uid so Kubernetes runAsNonRoot can verify it (deploy/k8s).
RUN useradd --create-home --uid 1000 medseg
USER 1000
WORKDIR /work
ENTRYPOINT ["medseg"]
CMD ["--help"]
