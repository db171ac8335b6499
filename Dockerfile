# Shoal container image: `docker build -t shoal:0.1.0 .` then e.g.
#   docker run --rm -p 2055:2055/udp -p 9109:9109 shoal:0.1.0 run --demo --metrics 0.0.0.0:9109
# Two stages: the builder installs Shoal into a virtualenv and compiles numba's cache; the final stage
# copies only the virtualenv and the cache (no compilers, no pip cache) and runs as an unprivileged user.
# The Helm chart (helm/shoal) runs it with a read-only root filesystem: see docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/opt/shoal/numba-cache NUMBA_CPU_NAME=generic
WORKDIR /src
RUN python -m venv /opt/shoal/venv
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY detectors ./detectors
COPY schemas ./schemas
RUN /opt/shoal/venv/bin/pip install --no-cache-dir . \
    # importing the kernels compiles them for a generic x86-64 CPU into NUMBA_CACHE_DIR
    && /opt/shoal/venv/bin/python -c "import detectors.kernels, pipeline.decode.mapped" \
    && mkdir -p /opt/shoal/samples \
    && cp pipeline/samples/demo-intel.json pipeline/samples/demo-traffic.pcap /opt/shoal/samples/

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Shoal" \
      org.opencontainers.image.description="Flow-telemetry detection pipeline: NetFlow/IPFIX collector, Kafka matcher workers, intel sync"
ENV PATH=/opt/shoal/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/cache/shoal/numba NUMBA_CPU_NAME=generic
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid shoal --home-dir /nonexistent --shell /usr/sbin/nologin shoal
# Same paths as in the builder: numba's cache index refers to the installed sources by path and mtime.
COPY --from=build /opt/shoal /opt/shoal
# A writable copy of the compiled cache for plain `docker run`; on Kubernetes an init container copies
# /opt/shoal/numba-cache into an emptyDir mounted here (the root filesystem is read-only there).
COPY --from=build --chown=10001:10001 /opt/shoal/numba-cache /var/cache/shoal/numba
USER 10001:10001
WORKDIR /tmp
EXPOSE 2055/udp 4739/udp 9108/tcp 9109/tcp
ENTRYPOINT ["shoal"]
CMD ["--help"]
