"""The admin pages: sites, people and badges, the CSV import of a cohort, machine types and
machines, competencies and their steps, programmes (the data they ask of participants and
their consent texts), devices, sessions left open by a dead device, and the audit log. Under
``/admin``, admins only.

Views are thin: the rules live in services (``badges``, ``people_import``, ``competencies``,
``audit``). A form with errors is shown again with HTTP 400 and nothing is changed.
"""

from __future__ import annotations

from server.adapters.web.admin import competencies, machines, monitor, people, programmes, sessions, sites
from server.adapters.web.admin.base import bp

__all__ = ["bp", "competencies", "machines", "monitor", "people", "programmes", "sessions", "sites"]
