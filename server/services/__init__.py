"""Domain services: each takes the database session it works in; callers own the transaction."""

# Three modules register SQLAlchemy flush hooks on every Session: allowlists (marks every offline
# allow-list dirty when badges, people, qualifications or machines change), usage_tracking
# (queues the usage days a change touches; opens and closes downtime periods) and hours_total
# (keeps each machine's total machine hours in step with its sessions). Importing them
# here means any process that touches a service (web, API, bridge, scheduler, CLI, tests) has
# the hooks, so no caller can forget them.
from server.services import allowlists as allowlists
from server.services import hours_total as hours_total
from server.services import usage as usage
from server.services import usage_tracking as usage_tracking
