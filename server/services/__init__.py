"""Domain services: each takes the database session it works in; callers own the transaction."""

# Two modules register SQLAlchemy flush hooks on every Session: allowlists (marks every offline
# allow-list dirty when badges, people, qualifications or machines change) and usage_tracking
# (queues the usage days a change touches; opens and closes downtime periods). Importing them
# here means any process that touches a service (web, API, bridge, scheduler, CLI, tests) has
# the hooks, so no caller can forget them.
from server.services import allowlists as allowlists
from server.services import usage as usage
from server.services import usage_tracking as usage_tracking
