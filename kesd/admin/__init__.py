"""The admin channel: a root-only Unix socket that ``kesctl`` speaks to (docs/admin-protocol.md).

``protocol`` is the pure wire format, ``operations`` what each request does inside the daemon,
``server`` the socket and its peer checks, ``client`` the blocking client ``kesctl`` uses.
"""
