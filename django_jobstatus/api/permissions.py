"""Who may use the API: staff with the model permissions, and (opt-in) owners of their runs."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from django_jobstatus.conf import settings

# Which model permission each HTTP method needs.
_PERMISSIONS = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "change",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}
# What an owner may do with their own runs under API_OWNER_SCOPED: read and kill.
_OWNER_ACTIONS = frozenset({"view", "change"})


def owner_scoped(user: Any) -> bool:
    """Whether ``user`` sees only the runs they own (API_OWNER_SCOPED and not staff)."""
    return bool(settings.API_OWNER_SCOPED and not getattr(user, "is_staff", False))


class JobRunPermission(BasePermission):
    """Authenticated staff with the model permission the method needs.

    ``view_jobrun`` for reads, ``change_jobrun`` for kills, ``delete_jobrun`` for deletes.
    With ``JOBSTATUS["API_OWNER_SCOPED"] = True``, users who are not staff may also read and
    kill the runs they own (the view narrows their queryset to those).
    """

    def _action(self, request: Request) -> str | None:
        return _PERMISSIONS.get(request.method or "")

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        action = self._action(request)
        if not user or not user.is_authenticated or action is None:
            return False
        if user.is_staff:
            return bool(user.has_perm(f"django_jobstatus.{action}_jobrun"))
        return owner_scoped(user) and action in _OWNER_ACTIONS

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        user = request.user
        if owner_scoped(user):
            return bool(obj.owner_id == user.pk)
        return True


class JobMonitorPermission(BasePermission):
    """Authenticated staff with the JobMonitor permission the method needs (view, add, change, delete)."""

    _METHODS = {**_PERMISSIONS, "POST": "add"}

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        action = self._METHODS.get(request.method or "")
        if not user or not user.is_authenticated or not user.is_staff or action is None:
            return False
        return bool(user.has_perm(f"django_jobstatus.{action}_jobmonitor"))


class MetricsPermission(BasePermission):
    """The API's own permissions, but never for a user who sees only their own runs."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return not owner_scoped(request.user)
