# Two commands from a fresh clone: `make run` and `make test` (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CATALOG = server/translations

.PHONY: install run test faults lint typecheck unit bench bench-fleet bench-dashboards bench-documents translations extract browser pdf octoprint moonraker mosquitto nginx wrk bench-web postgresql-client pi-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Werkbank needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,agent,dev]'
	# The RC522 driver's own dependencies (RPi.GPIO, spidev) build only on a Pi; the tests
	# give it an emulated chip instead, so install the library alone.
	$(BIN)/pip install -q --no-deps mfrc522==0.0.7
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) translations

# Compile the German/English catalogues (the .mo files are build output, not in git).
translations: $(STAMP)
	$(BIN)/pybabel compile -d $(CATALOG) -D messages 2>&1 | grep -v "^compiling" || true

# Re-extract the message catalogue after changing UI text, then translate the new entries.
extract: $(STAMP)
	$(BIN)/pybabel -q extract -F babel.cfg -k _l -k lazy_gettext -k N_ -o $(CATALOG)/messages.pot .
	$(BIN)/pybabel -q update -i $(CATALOG)/messages.pot -d $(CATALOG) -D messages --no-fuzzy-matching --ignore-obsolete

run: install
	$(BIN)/werkbank up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser tests drive Debian's Chromium (never a downloaded one); install it when missing.
browser:
	@[ -x /usr/bin/chromium ] || { echo "installing Debian's chromium for the browser tests"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)) \
	  || { echo "could not install chromium: run 'apt-get install -y chromium' as root"; exit 1; }; }

# Certificates and attendance sheets are PDFs made by WeasyPrint, which needs Debian's pango; the
# tests read the PDFs back with poppler's pdftotext and pdftoppm. Install them when missing.
pdf:
	@{ [ -e /usr/lib/x86_64-linux-gnu/libpango-1.0.so.0 ] || ls /usr/lib/*/libpango-1.0.so.0 >/dev/null 2>&1; } && \
	  { ls /usr/lib/*/libpangoft2-1.0.so.0 >/dev/null 2>&1; } && \
	  { ls /usr/lib/*/libharfbuzz-subset.so.0 >/dev/null 2>&1; } && \
	  command -v pdftotext >/dev/null && command -v pdftoppm >/dev/null && fc-list | grep -qi dejavu || \
	  { echo "installing pango, fonts and poppler-utils for the PDF documents"; \
	  (apt-get install -y -q libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils >/dev/null 2>&1 || \
	   (apt-get update -q && apt-get install -y -q libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils)) \
	  || { echo "could not install them: run 'apt-get install -y libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils' as root"; exit 1; }; }

# The shipped broker config (deploy/mosquitto) is tested with Debian's Mosquitto itself, which
# Debian puts in /usr/sbin (often not on a user's PATH); install it when missing. Its own service
# listens on loopback port 1883 only, which the tests never use.
mosquitto:
	@{ [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null; } && \
	  { [ -x /usr/bin/mosquitto_passwd ] || command -v mosquitto_passwd >/dev/null; } || \
	  { echo "installing Debian's mosquitto for the broker tests"; \
	  (apt-get install -y -q mosquitto >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q mosquitto)) \
	  || { echo "could not install mosquitto: run 'apt-get install -y mosquitto' as root"; exit 1; }; }

# The production stack test (tests/deploy/test_stack.py) runs deploy/nginx-werkbank.conf with
# Debian's nginx as a private process on free ports; install it when missing (its own service,
# if it starts, listens on port 80, which the tests never use).
nginx:
	@[ -x /usr/sbin/nginx ] || { echo "installing Debian's nginx for the stack test"; \
	  (apt-get install -y -q nginx >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q nginx)) \
	  || { echo "could not install nginx: run 'apt-get install -y nginx' as root"; exit 1; }; }

# The web load bench (bench/web_load.py) drives nginx with Debian's wrk; install it when missing.
wrk:
	@[ -x /usr/bin/wrk ] || { echo "installing Debian's wrk for the web load bench"; \
	  (apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q wrk)) \
	  || { echo "could not install wrk: run 'apt-get install -y wrk' as root"; exit 1; }; }

# `werkbank backup` and `werkbank restore` of a PostgreSQL database run pg_dump and pg_restore
# (tests/server/test_backup.py with TEST_DATABASE_URL); install Debian's postgresql-client when
# missing (its client only: no server, no service).
postgresql-client:
	@{ command -v pg_dump >/dev/null && command -v pg_restore >/dev/null; } || \
	  { echo "installing Debian's postgresql-client for the backup tests"; \
	  (apt-get install -y -q postgresql-client >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q postgresql-client)) \
	  || { echo "could not install postgresql-client: run 'apt-get install -y postgresql-client' as root"; exit 1; }; }

# The OctoPrint monitor is tested against a real OctoPrint (its bundled virtual printer), in a
# virtualenv of its own so its pinned dependencies never decide ours.
octoprint:
	sh tests/agent/install_octoprint.sh

# The Moonraker monitor is tested against a real Moonraker (PyPI), in a virtualenv of its own,
# with a peer of Klipper's host process behind it.
moonraker:
	sh tests/agent/install_moonraker.sh

# Three worker processes (pytest-xdist), each with its own database and brokers; TEST_WORKERS=0
# runs the suite in one process.
TEST_WORKERS ?= 3
unit: install browser octoprint moonraker mosquitto pdf nginx postgresql-client
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --cov --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

test: lint typecheck unit

# The fault suite (docs/faults.md): kill -9 of bridge, agents and broker, a refusing and a locked
# database, cut links, skewed clocks, on real processes. Needs mosquitto and PostgreSQL
# (FAULTS_DATABASE_URL, else TEST_DATABASE_URL, else postgres@127.0.0.1:5432); about 9 minutes
# on two cores, stopped after FAULTS_TIMEOUT seconds whatever happens. FAULTS_ARGS: e.g. --only clean.
FAULTS_TIMEOUT ?= 1200
faults: install
	timeout -k 30 $(FAULTS_TIMEOUT) $(BIN)/python -m tests.faults.run $(FAULTS_ARGS)

# The Pi install, proven under emulation (docs/deploy.md): a provisioning bundle's INSTALL.md run
# in a Debian 12 arm64 root through qemu-user-static, ending with the agent's config check and a
# simulated start against the shipped broker. Needs debootstrap, qemu-user-static and proot
# (installed when missing) and Debian's mirror. The base root (debootstrap, the slow part) is kept
# in PI_CACHE and rebuilt when tests/pi/pi-root.sh's package list changes; stopped after PI_TIMEOUT s.
PI_CACHE ?= var/pi-check
PI_TIMEOUT ?= 2700
pi-check: install mosquitto
	timeout -k 30 $(PI_TIMEOUT) $(BIN)/python -m tests.pi.check --cache $(PI_CACHE)

bench: install
	$(BIN)/python bench/tap_latency.py

# The fleet: 500 devices, telemetry at a fixed rate, taps and events, one bridge and then two with
# shared subscriptions (bench/fleet.py; FLEET_ARGS e.g. "--rate 10000 --duration 10 --bridges 1,2").
bench-fleet: install
	$(BIN)/python bench/fleet.py $(FLEET_ARGS) $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))

# Dashboards and reports on generated years of data (bench/dashboards.py; SCALE=small|full,
# DATABASE_URL=... for PostgreSQL: an empty database the first time, it is filled).
SCALE ?= small
bench-dashboards: install
	$(BIN)/python bench/dashboards.py --scale $(SCALE) $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))

# Certificates and attendance sheets on the demo history (bench/documents.py; SCALE=full for the
# five years the targets are set for; BENCH_DATABASE_URL=sqlite:////tmp/wb-documents.sqlite keeps
# the generated years for the next run).
bench-documents: install pdf
	$(BIN)/python bench/documents.py --scale $(SCALE) $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))

# Overview, utilisation dashboard and funder report under 20 logged-in users through nginx +
# gunicorn on PostgreSQL with the five-year demo history, beside the Flask test client
# (bench/web_load.py; docs/performance.md). About 2 minutes; the first run generates the database
# wb_webload_bench (BENCH_ADMIN_URL's server, default postgres@127.0.0.1) for about 4 more, which
# later runs reuse; FRESH=1 generates it again.
bench-web: install nginx wrk
	$(BIN)/python bench/web_load.py $(if $(FRESH),--fresh)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
