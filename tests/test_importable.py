"""Every module imports with only Django installed, except those of an extra, which need it.

CI runs this file in a virtualenv without extras (``make test-core``) and in the full one.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_jobstatus

pytestmark = pytest.mark.engine_agnostic

# Module prefix -> the top-level packages its extra brings.
EXTRAS = {
    "django_jobstatus.api": {"rest_framework", "django_filters", "drf_spectacular"},
    "django_jobstatus.contrib.celery": {"celery"},
    "django_jobstatus.contrib.rq": {"rq", "django_rq", "redis"},
    "django_jobstatus.metrics": {"prometheus_client"},
    # Needs django.tasks (Django 6) or the backport; says so with ImproperlyConfigured.
    "django_jobstatus.contrib.tasks": {"django_tasks"},
}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(
        django_jobstatus.__path__, prefix="django_jobstatus."
    )
    if ".migrations." not in info.name
)


def _extra_of(module: str) -> set[str]:
    for prefix, packages in EXTRAS.items():
        if module == prefix or module.startswith(prefix + "."):
            return packages
    return set()


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_or_needs_only_its_extra(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        assert missing in _extra_of(module), (
            f"{module} needs {missing!r}, which is not part of its extra"
        )
    except ImproperlyConfigured as exc:
        # The tasks integration without a tasks framework: the message names the package.
        assert _extra_of(module) == {"django_tasks"}, exc
        assert "django-tasks" in str(exc)


def test_the_core_modules_are_all_found() -> None:
    core = [m for m in MODULES if not _extra_of(m)]
    for name in ("models", "querysets", "tracking", "admin", "management.commands"):
        assert any(m.startswith(f"django_jobstatus.{name}") for m in core), name


def test_the_scopes_import_no_model() -> None:
    """querysets.py (which models.py imports) needs no model at import time: no cycle."""
    code = (
        "import sys, django_jobstatus.querysets, django_jobstatus.checks;"
        "print('django_jobstatus.models' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert done.stdout.strip() == "False", done.stderr


def test_models_still_offers_status_and_the_value_checks() -> None:
    from django_jobstatus import models, states, values

    assert models.Status is states.Status
    for name in ("storable", "check_json", "check_progress", "cut", "default_worker"):
        assert getattr(models, name) is getattr(values, name)
