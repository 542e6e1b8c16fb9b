"""The admin console: server-rendered pages over the audit database, `/metrics` and health
probes. `create_app` builds the ASGI app; `server.run_console` serves it with uvicorn."""
