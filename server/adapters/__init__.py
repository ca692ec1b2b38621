"""The adapters: each turns one kind of outside input into service calls and their results back out.

``web`` (the pages), ``api`` (the JSON API), ``bridge`` (MQTT), ``scheduler`` (timed jobs),
``backup`` (backup and restore) and ``demo`` (the demo lab's generator). They import the services
and the models below them and never each other (docs/architecture.md, "Which way the arrows run").
"""
