"""Domain services: each takes the database session it works in; callers own the transaction."""

# The flush hook that marks every offline allow-list dirty when badges, people, qualifications
# or machines change lives in allowlists; importing it here means any process that touches a
# service (web, API, bridge, scheduler, CLI) has the hook, so no caller can forget it.
from server.services import allowlists as allowlists
from server.services import usage as usage
