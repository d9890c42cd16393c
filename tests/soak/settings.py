"""Settings of the processes the soak and fault tests start (workers, killer, purger, reaper, reader).

The suite's own settings, on the database named in JOBSTATUS_SOAK_DB (JSON: the test
database of the suite that started them, or a throwaway cluster), with the JOBSTATUS
values in JOBSTATUS_SOAK_SETTINGS (JSON) over the suite's.
"""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import JOBSTATUS as _TEST_JOBSTATUS

DATABASES = {"default": json.loads(os.environ["JOBSTATUS_SOAK_DB"])}
JOBSTATUS = {
    **_TEST_JOBSTATUS,
    **json.loads(os.environ.get("JOBSTATUS_SOAK_SETTINGS") or "{}"),
}
