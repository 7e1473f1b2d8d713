"""
File descriptors: raise the open-files limit, and derive a connection cap
from it.

Every client connection is a descriptor.  The soft RLIMIT_NOFILE is often
1024 while the hard limit is far higher; a server raises its soft limit to
the hard one at start, as mature daemons do.  It then stops accepting a
little below the limit, so that accept() never fails with EMFILE (Twisted
would log every failed accept) and descriptors remain for log files,
listeners and outgoing connections.
"""

from __future__ import annotations

import resource

RESERVED_FDS = 64


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(open_files: int) -> int:
    """Connections to allow with this many descriptors: 90 %, less a reserve."""
    return max(16, min(open_files * 9 // 10, open_files - RESERVED_FDS))
