# The epp image: `epp` on python:3.11-slim, run as an unprivileged user.
#   docker build -t ghcr.io/epp-dev/epp:0.1.0 .
# Kubernetes runs it with `serve ...` arguments (see deploy/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# pyproject.toml names README.md as the package's readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY epp ./epp
# epp's CLI imports vllm_sim to build `epp sim`, so even `epp serve` needs it.
COPY vllm_sim ./vllm_sim
RUN pip install . && rm -rf /src

# A numeric user, so that Kubernetes' runAsNonRoot can verify it is not root.
USER 65532:65532
WORKDIR /
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
CMD ["serve", "--help"]
