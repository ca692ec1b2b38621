# Server image (web, bridge, scheduler) for deploy/compose.yaml.
FROM python:3.11-slim
WORKDIR /opt/werkbank
COPY . .
RUN pip install --no-cache-dir '.[server]' && pybabel compile -d server/translations -D messages
ENV WERKBANK_VAR_DIR=/var/lib/werkbank
CMD ["werkbank", "web", "--host", "0.0.0.0"]
