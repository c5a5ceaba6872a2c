"""Running the gateway as processes: one server on a socket, or a supervisor and N workers.

    server.py    the app on a socket, with the gateway's JSON error even where aiohttp answers alone
    workers.py   `serve --workers N`: the supervisor, its workers, reload and replacement

May import: app and everything below it. Only cli imports this package.
"""
