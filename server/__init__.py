"""Werkbank server: entry points (cli, wsgi), adapters (web, api, bridge, scheduler) over the
services and the models; docs/architecture.md draws the arrows."""

from server.app import create_app

__all__ = ["create_app"]
