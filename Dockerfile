# The one image of the proxy, the manager and the workers: deploy/ picks the command
# (eventing-proxy, eventing-manager or eventing-worker) and the environment (a ConfigMap).
#
#   docker build -t ghcr.io/eventing-project/eventing:0.1.0 .
#
# Never built in this project's CI: its machines have no Docker engine. deploy/ is tested against
# a real API server instead (tests/kubernetes), which checks the manifests, not this image.
FROM python:3.11-slim

# HOME: the root filesystem is read-only in the cluster; /tmp is the pods' writable emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /src
COPY setup.py setup.cfg pyproject.toml README.md ./
COPY eventing ./eventing
COPY proxy ./proxy
COPY manager ./manager
COPY workers ./workers
COPY devtools ./devtools
RUN pip install . \
    && rm -rf /src \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin eventing

WORKDIR /
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 8081 9191
CMD ["eventing-proxy"]
