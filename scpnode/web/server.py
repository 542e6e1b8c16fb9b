"""`scpnode web`: the console under uvicorn, in its own process.

`serve` starts this as a child process (like the workers) rather than a thread: page
renders and 100,000-row exports are Python work that would otherwise share the SCP's GIL, and
a console crash must never take the SCP down. uvicorn handles SIGTERM itself: it stops
accepting, lets running requests finish (up to `GRACE_S`), and returns.
"""

from __future__ import annotations

import logging

from scpnode.config import Settings

log = logging.getLogger(__name__)
GRACE_S = 5


def run_console(settings: Settings) -> int:
    import uvicorn

    from scpnode.app import open_database
    from scpnode.web.app import create_app
    from scpnode.web.users import count_users

    db = open_database(settings)
    with db.session() as session:
        if count_users(session) == 0:
            log.warning("the console has no users yet: scpnode users add NAME --role admin")
    web = settings.web
    config = uvicorn.Config(
        create_app(settings, db),
        host=web.host,
        port=web.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACE_S,
        ssl_certfile=str(web.tls_cert) if web.tls_cert else None,
        ssl_keyfile=str(web.tls_key) if web.tls_key else None,
    )
    scheme = "https" if web.tls_cert else "http"
    log.info("console listening", extra={"url": f"{scheme}://{web.host}:{web.port}/"})
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        db.dispose()
    return 0 if server.started else 1
