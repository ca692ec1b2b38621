# Server image (web, bridge, scheduler) for deploy/compose.yaml.
FROM python:3.11-slim
WORKDIR /opt/werkbank
# WeasyPrint's system libraries for the PDF documents (docs/proof.md): Pango, HarfBuzz's subsetter
# (embedding fonts with it instead of fontTools takes a fifth off each PDF) and the fonts.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN pip install --no-cache-dir '.[server]' && pybabel compile -d server/translations -D messages
ENV WERKBANK_VAR_DIR=/var/lib/werkbank
CMD ["werkbank", "web", "--host", "0.0.0.0"]
