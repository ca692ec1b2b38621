# Server image (web, bridge, scheduler, backup) for deploy/compose.yaml.
FROM python:3.11-slim
# `werkbank backup` runs pg_dump, which must be of the database server's major version or newer
# (it refuses an older client's dump): compose runs postgres:16, and Debian's own client may be
# older, so take postgresql-client-16 from PostgreSQL's apt repository (PGDG), which Debian's
# postgresql-common adds with its signing key. tests/deploy/test_compose.py keeps the two in step.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && apt-get install -y --no-install-recommends postgresql-client-16 \
 && rm -rf /var/lib/apt/lists/*
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
