"""The REST API (the ``api`` extra): the only package that imports rest_framework."""

from __future__ import annotations
