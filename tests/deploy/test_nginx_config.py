"""deploy/nginx-werkbank.conf: the security headers on every response nginx sends, error pages too,
consistent with the app's own (server/adapters/web/common.py). No nginx here: the file is read as nginx
reads its add_header rules (a block with add_header of its own inherits none from outside)."""

from __future__ import annotations

import re
import shlex

from flask import Response

from server.adapters.web.common import security_headers
from tests.deploy.mosquitto_layout import DEPLOY

NGINX = DEPLOY / "nginx-werkbank.conf"
NGINX_ONLY = {"Strict-Transport-Security", "X-Frame-Options"}


def _blocks() -> dict[str, list[list[str]]]:
    """Directives per block, the block named by its opening line (``server#2``, ``location /static/``)."""
    blocks: dict[str, list[list[str]]] = {}
    stack: list[str] = []
    servers = 0
    for raw in NGINX.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            if name == "server":
                servers += 1
                name = f"server#{servers}"
            stack.append(name)
            blocks.setdefault(name, [])
        elif line == "}":
            stack.pop()
        else:
            blocks[stack[-1]].append(shlex.split(line.rstrip(";")))
    return blocks


def _headers(directives: list[list[str]]) -> dict[str, tuple[str, bool]]:
    """``add_header`` rules of a block: name -> (value, always)."""
    return {d[1]: (d[2], d[-1] == "always") for d in directives if d[0] == "add_header"}


def _app_headers() -> dict[str, str]:
    return dict(security_headers(Response()).headers)


def test_nginx_sends_the_security_headers_on_every_response_error_pages_too() -> None:
    blocks = _blocks()
    app = _app_headers()
    https = next(name for name, ds in blocks.items() if ["listen", "443", "ssl", "http2"] in ds)
    server = _headers(blocks[https])
    expected = NGINX_ONLY | {"X-Content-Type-Options", "Referrer-Policy"}
    assert set(server) == expected
    assert all(always for _value, always in server.values()), "without `always`, error pages lack them"
    assert server["Strict-Transport-Security"][0].startswith("max-age=")
    assert int(server["Strict-Transport-Security"][0].split("=")[1]) >= 180 * 24 * 3600
    assert server["X-Frame-Options"][0] == "DENY"
    for name in expected - NGINX_ONLY:
        assert server[name][0] == app[name], f"nginx and the app disagree on {name}"

    # Static files come from disk, not the app: nginx adds the app's policy there, and because
    # that location has add_header rules of its own, it must repeat the server's.
    static = _headers(blocks["location /static/"])
    assert static == {**server, "Content-Security-Policy": (app["Content-Security-Policy"], True)}

    # Pages come from the app: its policy (which a page may extend with a nonce) is the only one,
    # and the headers both set arrive once.
    proxied = blocks["location /"]
    assert _headers(proxied) == {}, "a location's own add_header would drop the server's"
    hidden = {d[1] for d in proxied if d[0] == "proxy_hide_header"}
    assert hidden == (set(server) & set(app))
