"""The French and German catalogs: the admin, the dashboard, the API and the commands speak them,
and every string the sources mark is in both catalogs, translated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.test import override_settings
from django.utils import translation

import django_jobstatus
from django_jobstatus.models import Status

CI = os.environ.get("CI") == "true"
PACKAGE = Path(django_jobstatus.__file__).parent
LANGUAGES = ("fr", "de")
DASHBOARD = "/admin/django_jobstatus/jobrun/dashboard/"
CHANGELIST = "/admin/django_jobstatus/jobrun/"

# Strings each page shows in each language, and the English they replace.
PAGES = {
    DASHBOARD: {
        "fr": [
            "Tableau de bord des tâches",
            "Actives maintenant",
            "Exécutions bloquées",
            "Derniers échecs",
            "En cours",
        ],
        "de": [
            "Job-Dashboard",
            "Jetzt aktiv",
            "Hängende Ausführungen",
            "Letzte Fehlschläge",
            "Läuft",
        ],
        "en": ["Job dashboard", "Active now", "Stuck runs", "Latest failures"],
    },
    CHANGELIST: {
        "fr": [
            "Demander l’arrêt (coopératif)",
            "Active (non terminée)",
            "Dernières 24 heures",
            "Tableau de bord",
            "En cours",
        ],
        "de": [
            "Abbruch anfordern (kooperativ)",
            "Aktiv (nicht beendet)",
            "Letzte 24 Stunden",
            "Dashboard",
            "Läuft",
        ],
        "en": [
            "Request kill (cooperative)",
            "Active (not finished)",
            "Last 24 hours",
            "Running",
        ],
    },
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("url", list(PAGES))
def test_admin_pages_are_translated(
    admin_client: Any, make_run: Any, url: str, language: str
) -> None:
    make_run("reports.build")
    with override_settings(LANGUAGE_CODE=language), translation.override(language):
        response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert f'lang="{language}"' in page
    for text in PAGES[url][language]:
        assert text in page
    for text in PAGES[url]["en"]:
        assert text not in page


@pytest.mark.django_db
def test_cached_dashboard_figures_are_per_language(
    admin_client: Any, make_run: Any
) -> None:
    """The week's chart is cached; its bar titles must not come back in the language that cached them."""
    make_run("reports.build", status=Status.KILLED)
    cache.clear()
    with override_settings(LANGUAGE_CODE="de"), translation.override("de"):
        assert (
            "abgebrochen oder verloren: 1"
            in admin_client.get(DASHBOARD, {"window": "7d"}).content.decode()
        )
    with override_settings(LANGUAGE_CODE="fr"), translation.override("fr"):
        page = admin_client.get(DASHBOARD, {"window": "7d"}).content.decode()
    assert "arrêtées ou perdues\xa0: 1" in page
    assert "abgebrochen oder verloren" not in page


@pytest.mark.django_db
def test_admin_messages_are_translated_with_plurals(
    admin_client: Any, make_run: Any
) -> None:
    runs = [make_run("a"), make_run("b")]
    with override_settings(LANGUAGE_CODE="fr"), translation.override("fr"):
        response = admin_client.post(
            CHANGELIST,
            {"action": "request_kill", "_selected_action": [str(runs[0].pk)]},
            follow=True,
        )
        assert "1 exécution a été priée de s’arrêter." in response.content.decode()
        response = admin_client.post(
            CHANGELIST,
            {"action": "request_kill", "_selected_action": [str(r.pk) for r in runs]},
            follow=True,
        )
    page = response.content.decode()
    assert "1 exécution a été priée de s’arrêter." in page
    assert "1 exécution ignorée" in page
    assert "Asked" not in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("fr", "Simulation\xa0: 0 exécution serait marquée comme perdue"),
        ("de", "Probelauf: 0 Ausführungen würden als verloren markiert"),
    ],
)
def test_commands_speak_the_language(language: str, expected: str) -> None:
    out = StringIO()
    with override_settings(LANGUAGE_CODE=language), translation.override(language):
        call_command("reap_jobstatus", "--dry-run", stdout=out)
    assert expected in out.getvalue()


@pytest.mark.skipif(not settings.HAS_API, reason="needs the api extra")
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "expected"),
    [
        (
            {"period": "1y"},
            "period",
            "unité 'y' inconnue dans la période '1y'\xa0; utilisez s, m, h, d ou w",
        ),
        ({"period": "0h"}, "period", "la période '0h' doit être plus longue que zéro"),
        (
            {"has_errors": "maybe"},
            "has_errors",
            "Saisissez true ou false, pas 'maybe'.",
        ),
    ],
)
def test_api_errors_are_translated(
    admin_client: Any, query: dict[str, str], field: str, expected: str
) -> None:
    with override_settings(LANGUAGE_CODE="fr"), translation.override("fr"):
        response = admin_client.get("/api/jobstatus/runs/", query)
    assert response.status_code == 400
    assert response.json()[field] == [expected]


# The catalogs are complete: what makemessages would extract now is all in them, translated.


def _gettext_tools() -> None:
    missing = [
        tool
        for tool in ("xgettext", "msgmerge", "msguniq", "msgfmt")
        if not shutil.which(tool)
    ]
    if missing:
        reason = f"needs GNU gettext ({', '.join(missing)} not found; apt-get install gettext)"
        if CI:
            pytest.fail(
                f"{reason} (CI=true: a missing tool fails the test)", pytrace=False
            )
        pytest.skip(reason)


def _entries(catalog: Any) -> dict[tuple[str | None, str], Any]:
    return {
        (entry.msgctxt, entry.msgid): entry for entry in catalog if not entry.obsolete
    }


def _translation(entry: Any) -> Any:
    return (
        tuple(entry.msgstr_plural[i] for i in sorted(entry.msgstr_plural))
        if entry.msgid_plural
        else entry.msgstr
    )


@pytest.mark.engine_agnostic
def test_catalogs_hold_every_marked_string(tmp_path: Path) -> None:
    """Fails when ``makemessages`` would add a string to a catalog, or find one stale, untranslated or fuzzy."""
    _gettext_tools()
    polib = pytest.importorskip("polib")
    copy = tmp_path / "django_jobstatus"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    # makemessages needs no settings; without DJANGO_SETTINGS_MODULE it reads only the copy.
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "DJANGO_SETTINGS_MODULE"
    }
    args = ["makemessages", "--keep-pot", "--add-location", "file"]
    args += [f"--locale={language}" for language in LANGUAGES]
    subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
    )
    sources = _entries(polib.pofile(str(copy / "locale" / "django.pot")))
    assert len(sources) > 100  # the sources were read
    for language in LANGUAGES:
        committed_po = PACKAGE / "locale" / language / "LC_MESSAGES" / "django.po"
        committed = _entries(polib.pofile(str(committed_po)))
        missing = sorted(msgid for _ctxt, msgid in set(sources) - set(committed))
        stale = sorted(msgid for _ctxt, msgid in set(committed) - set(sources))
        assert not missing, (
            f"{language}: not in the catalog (run makemessages, then translate): {missing}"
        )
        assert not stale, (
            f"{language}: no longer in the sources (run makemessages --no-obsolete): {stale}"
        )
        untranslated = [
            msgid
            for (_ctxt, msgid), entry in committed.items()
            if not entry.translated()
        ]
        assert not untranslated, f"{language}: untranslated or fuzzy: {untranslated}"
        merged = _entries(
            polib.pofile(str(copy / "locale" / language / "LC_MESSAGES" / "django.po"))
        )
        assert not [entry.msgid for entry in merged.values() if not entry.translated()]
        # The compiled catalog is the .po's: compilemessages was run after the last edit.
        compiled = _entries(polib.mofile(str(committed_po.with_suffix(".mo"))))
        assert {
            key: _translation(entry) for key, entry in compiled.items() if entry.msgid
        } == {key: _translation(entry) for key, entry in committed.items()}, (
            f"{language}: django.mo is not django.po compiled (run compilemessages)"
        )


@pytest.mark.engine_agnostic
@pytest.mark.parametrize("language", LANGUAGES)
def test_compilemessages_accepts_each_catalog(language: str) -> None:
    """``msgfmt --check`` (what ``compilemessages`` runs) finds no error: a plural whose
    forms named different variables (``%(name)s`` / ``%(names)s``) made it fail for
    anyone compiling the catalogs."""
    _gettext_tools()
    catalog = PACKAGE / "locale" / language / "LC_MESSAGES" / "django.po"
    checked = subprocess.run(
        ["msgfmt", "--check", "-o", os.devnull, str(catalog)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("language", LANGUAGES)
def test_chart_numbers_are_not_localized(
    admin_client: Any, make_run: Any, language: str
) -> None:
    """SVG wants 12.5, not the 12,5 of a French or German number format."""
    for status in (Status.SUCCEEDED, Status.FAILED, Status.KILLED):
        make_run("reports.build", status=status)
    with override_settings(LANGUAGE_CODE=language), translation.override(language):
        page = admin_client.get(DASHBOARD, {"window": "1h"}).content.decode()
    svg = page.split('class="jobstatus-chart"', 1)[1].split("</svg>", 1)[0]
    numbers = re.findall(r'\s(?:x|y|x1|x2|y1|y2|width|height)="([^"]*)"', svg)
    assert len(numbers) > 20
    assert [n for n in numbers if not re.fullmatch(r"-?\d+(\.\d+)?", n)] == []
