"""Imports that differ between versions of Django and of the task systems.

This is the one module with ``try``/``except ImportError``; everything else asks it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Django's tasks framework: built in from Django 6.0, the django-tasks backport before.
TASK_FRAMEWORKS = ("django.tasks", "django_tasks")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def task_signal_modules() -> list[ModuleType]:
    """Every importable ``signals`` module of the tasks framework.

    Both when Django 6 and the backport are installed: backends built on the backport
    (django-tasks-rq) send its signals, which are other objects than Django's.
    """
    modules = (_import(f"{name}.signals") for name in TASK_FRAMEWORKS)
    return [module for module in modules if module is not None]


def inline_task_backends() -> tuple[type, ...]:
    """The backends that run a task inside ``enqueue()`` (ImmediateBackend)."""
    modules = (_import(f"{name}.backends.immediate") for name in TASK_FRAMEWORKS)
    return tuple(module.ImmediateBackend for module in modules if module is not None)


def installed(name: str) -> bool:
    """Whether the module ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None
