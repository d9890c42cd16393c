"""Who may use the API: staff with the model permissions, and (opt-in) owners of their runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from django_jobstatus.conf import settings

if TYPE_CHECKING:
    from django_jobstatus.querysets import JobRunQuerySet

# Which model permission each HTTP method needs besides view (seeing anything needs view).
# A method the view does not allow needs view alone, so that it is answered 405.
_ACTIONS = {"POST": "change", "DELETE": "delete"}
# What an owner may do with their own runs under API_OWNER_SCOPED: read, and kill or
# retry (change).
_OWNER_ACTIONS = frozenset({"view", "change"})


def owner_scoped(user: Any) -> bool:
    """Whether ``user`` sees only the runs they own (API_OWNER_SCOPED and not staff)."""
    return bool(settings.API_OWNER_SCOPED and not getattr(user, "is_staff", False))


def owns(user: Any, run: Any) -> bool:
    """Whether ``run`` is ``user``'s. An anonymous user (let in by permission classes
    that allow it) owns none: its ``pk`` is None, as is the owner of every run an
    integration records."""
    return user.pk is not None and run.owner_id == user.pk


def visible_runs(user: Any, runs: JobRunQuerySet) -> JobRunQuerySet:
    """``runs`` as ``user`` may see and act on them: all of them, or under the owner
    scope those they own (``owns()``; ``owner_id=None`` would match every run without
    an owner)."""
    if not owner_scoped(user):
        return runs
    return runs.filter(owner_id=user.pk) if user.pk is not None else runs.none()


def required_permissions(
    method: str, allowed_methods: Iterable[str], acting: str | None = None
) -> list[str]:
    """The jobrun permissions a request needs: view, and the action's permission when it acts.

    ``view`` to see anything; ``view`` and ``change`` to kill or retry; ``view`` and
    ``delete`` to delete. The action's permission follows the method (POST changes, DELETE
    deletes) unless the view names it (``acting``: the bulk delete is a POST, as a DELETE
    with a body has no place in OpenAPI, and needs ``delete``). A method the view does not
    allow (TRACE, PROPFIND, PUT…) needs view alone, so that a user who may see the API
    learns it is not allowed (405).
    """
    action = _ACTIONS.get(method) if method in allowed_methods else None
    if action and acting:
        action = acting
    return ["view", action] if action else ["view"]


class JobRunPermission(BasePermission):
    """Authenticated staff with ``view_jobrun``, plus the permission of the action.

    ``view_jobrun`` for reads, and also ``change_jobrun`` for kills and retries,
    ``delete_jobrun`` for deletes (one run or many). With ``JOBSTATUS["API_OWNER_SCOPED"] = True``, users who are not staff may also
    read, kill and retry the runs they own (the view narrows their queryset to those).
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        needed = required_permissions(
            request.method or "",
            getattr(view, "allowed_methods", ()),
            getattr(view, "acting_permission", None),
        )
        if user.is_staff:
            return all(
                user.has_perm(f"django_jobstatus.{name}_jobrun") for name in needed
            )
        return owner_scoped(user) and set(needed) <= _OWNER_ACTIONS

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        user = request.user
        return not owner_scoped(user) or owns(user, obj)


def sees_incidents(user: Any) -> bool:
    """Whether ``user`` may read incidents (``view_jobmonitorincident``): their details
    quote failed runs' errors, which the admin shows only with that permission too."""
    return bool(user.has_perm("django_jobstatus.view_jobmonitorincident"))


class JobMonitorPermission(BasePermission):
    """Authenticated staff with ``view_jobmonitor``, plus the permission of the action.

    The same rule as for runs: view to see anything; view and add to create, view and change
    to edit, view and delete to delete; a method the view does not allow needs view alone (405).
    A view that lists incidents (``reads_incidents``) also needs ``view_jobmonitorincident``.
    """

    _ACTIONS = {"POST": "add", "PUT": "change", "PATCH": "change", "DELETE": "delete"}

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated or not user.is_staff:
            return False
        method = request.method or ""
        allowed = getattr(view, "allowed_methods", ())
        action = self._ACTIONS.get(method) if method in allowed else None
        needed = ["view", action] if action else ["view"]
        if getattr(view, "reads_incidents", False) and not sees_incidents(user):
            return False
        return all(
            user.has_perm(f"django_jobstatus.{name}_jobmonitor") for name in needed
        )


class MetricsPermission(BasePermission):
    """The API's own permissions, but never for a user who sees only their own runs."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return not owner_scoped(request.user)
