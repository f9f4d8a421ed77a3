# The epp image: `epp` on python:3.11-slim, run as an unprivileged user.
#   make image     (docker build with the build args below set from git)
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

# What llm_d_epp_info{commit,build_ref} reports (the reference's labels): the git commit
# and release tag the image was built from. Declared after the pip layer so that a new
# commit does not rebuild it.
ARG EPP_COMMIT=unknown
ARG EPP_BUILD_REF=unknown
ENV EPP_COMMIT=${EPP_COMMIT} \
    EPP_BUILD_REF=${EPP_BUILD_REF}

# A numeric user, so that Kubernetes' runAsNonRoot can verify it is not root.
USER 65532:65532
WORKDIR /
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
CMD ["serve", "--help"]
