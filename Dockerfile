# One image per service:
#   docker build --build-arg SERVICE=stream -t tollgate/tollgate-stream:0.1.0 .
# SERVICE is one of stream, auth, meter, router, analytics.

FROM python:3.11-slim AS build
ARG SERVICE
COPY tools/uv-requirements.txt /tmp/uv-requirements.txt
RUN test -n "$SERVICE" && pip install --no-cache-dir --require-hashes -r /tmp/uv-requirements.txt
WORKDIR /src
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
COPY pyproject.toml uv.lock ./
COPY libs/core libs/core
COPY libs/devtools/pyproject.toml libs/devtools/pyproject.toml
COPY services services
# Only the service's own package and its dependencies, installed as a wheel (not editable).
RUN uv sync --frozen --no-default-groups --no-editable --package "tollgate-${SERVICE}"

FROM python:3.11-slim
ARG SERVICE
LABEL org.opencontainers.image.title="tollgate-${SERVICE}"
RUN groupadd --gid 10001 tollgate && useradd --uid 10001 --gid tollgate --no-create-home tollgate
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 TOLLGATE_SERVICE=${SERVICE}
USER 10001
# exec so the service is PID 1's only child and receives SIGTERM directly
ENTRYPOINT ["/bin/sh", "-c", "exec tollgate-${TOLLGATE_SERVICE} \"$@\"", "--"]
