FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir .
# The config lives in a folder, so compose can mount the folder: a single-file bind mount keeps
# the old inode when an editor or `sed -i` replaces the file, and the gateway never sees the edit.
COPY config.toml ./config/config.toml
ENV GATEWAY_CONFIG=/app/config/config.toml
# Not root: the gateway needs no privilege (port 8080, files it only reads).
RUN useradd --system --uid 10001 --no-create-home gateway
USER gateway
EXPOSE 8080
CMD ["rerank-gateway", "serve", "--host", "0.0.0.0"]
