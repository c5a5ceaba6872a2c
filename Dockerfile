FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir .
COPY config.toml ./
EXPOSE 8080
CMD ["rerank-gateway", "serve", "--config", "/app/config.toml", "--host", "0.0.0.0"]
