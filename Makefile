# make demo: the testproject on SQLite at http://127.0.0.1:8000/admin/
# make test: the whole suite, on SQLite and (when it can be started) PostgreSQL
# Another Python/Django: make test PY=python3.12 DJANGO='Django>=6.1,<6.2' VENV=.venv312

PY ?= python3
DJANGO ?= Django>=5.2,<5.3
VENV ?= .venv
EXTRAS ?= api,celery,rq,tasks,metrics,dev
PYTEST_ARGS ?=
BIN := $(VENV)/bin
PG_URL := postgres://postgres@127.0.0.1:$(or $(JOBSTATUS_PGPORT),54329)/jobstatus
REDIS_URL ?= redis://127.0.0.1:$(or $(JOBSTATUS_REDISPORT),63799)/0
export REDIS_URL

.PHONY: demo demo-reset docs docs-check test test-sqlite test-postgres test-core dist-check lint check services stop-services bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" "$(DJANGO)"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py jobstatus_demo --admin
	@$(BIN)/python manage.py jobstatus_demo --live & live=$$!; trap 'kill $$live 2>/dev/null; wait $$live 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python manage.py runserver 127.0.0.1:8000

# The demo's data from scratch: every run deleted, a month of history seeded again.
demo-reset: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py jobstatus_demo --reset

services:
	.ci/services.sh start

stop-services:
	.ci/services.sh stop

# mypy's cache lives in the virtualenv: CI lints two virtualenvs at once in one checkout,
# and two mypy processes writing one cache crashed one of them (INTERNAL ERROR).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --cache-dir $(VENV)/.mypy_cache django_jobstatus

check: $(BIN)/.installed
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python -m django makemigrations --check --dry-run --settings tests.settings
	$(MAKE) --no-print-directory docs-check

# The docs site (MkDocs + Material, docs/): make docs serves it at http://127.0.0.1:8001/.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-check: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

test-sqlite: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

test-postgres: $(BIN)/.installed
	DATABASE_URL=$(PG_URL) $(BIN)/pytest $(PYTEST_ARGS)

# The suite runs on SQLite, then on PostgreSQL. Each service is reported on its own: without
# PostgreSQL the PostgreSQL run is left out; without Redis only the tests that need Redis are
# skipped (each says so). Under CI=true a missing service fails.
test: $(BIN)/.installed
	@.ci/services.sh start || [ "$$CI" != true ] || (echo "CI=true: services are required" >&2; exit 1)
	$(MAKE) --no-print-directory lint check
	$(MAKE) --no-print-directory test-sqlite
	@if .ci/services.sh has postgres || [ "$$CI" = true ]; then \
		$(MAKE) --no-print-directory test-postgres; \
	else echo "PostgreSQL is not running: the PostgreSQL run was left out (apt-get install postgresql)"; fi

# The core without any extra: Django and the test runner only. The core must work for a
# user who installed none of the extras (DRF's `tox base` env checks the same).
CORE_VENV := .venv-core
$(CORE_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CORE_VENV)/bin/python -m pip install --quiet -e . "$(DJANGO)" pytest pytest-django pytest-timeout dj-database-url hypothesis polib
	touch $@

test-core: $(CORE_VENV)/.installed
	$(CORE_VENV)/bin/pytest -p no:cacheprovider tests/test_*.py $(PYTEST_ARGS)

# The wheel must carry templates, static files, migrations, compiled translations and py.typed.
dist-check: $(BIN)/.installed
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -c "import sys, zipfile; names = zipfile.ZipFile(next(__import__('pathlib').Path('dist').glob('*.whl'))).namelist(); \
	need = ['django_jobstatus/py.typed', 'django_jobstatus/migrations/0001_initial.py', 'django_jobstatus/templates/', 'django_jobstatus/static/django_jobstatus/', 'django_jobstatus/locale/fr/LC_MESSAGES/django.mo', 'django_jobstatus/locale/de/LC_MESSAGES/django.mo']; \
	missing = [n for n in need if not any(x.startswith(n) for x in names)]; print('wheel:', len(names), 'files; missing:', missing or 'none'); sys.exit(bool(missing))"

# make bench: every benchmark at full size (long); make bench BENCH_ARGS=--quick: small sizes.
BENCH_ARGS ?=
bench: $(BIN)/.installed services
	DATABASE_URL=$(PG_URL) $(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .venv .venv312 .venv-core .services dist db.sqlite3 testproject/db.sqlite3
