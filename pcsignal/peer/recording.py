"""
What pcpeer records and where: the media kinds each container holds and
each call's file name.  No aiortc here, so option checking needs none.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Optional

KINDS = ("audio", "video")

#: What each recording container can hold.
RECORDABLE_KINDS = {
    ".mp4": frozenset(KINDS),
    ".webm": frozenset(KINDS),
    ".mkv": frozenset(KINDS),
    ".wav": frozenset(["audio"]),
}


def _safe_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:64] or "peer"


def recording_path(template: str, peer_name: str, peer_id: int, when: Optional[datetime.datetime] = None) -> str:
    """
    The file for one call's recording: ``--record calls/rec.mp4`` gives
    ``calls/rec-NAME-ID-YYYYMMDDTHHMMSS.mp4`` (``-2``, ``-3``... appended if
    that exists), so calls never overwrite each other.
    """
    root, ext = os.path.splitext(template)
    # The folder may be new (or removed since the start): create it.
    os.makedirs(os.path.dirname(os.path.abspath(template)), exist_ok=True)
    when = when or datetime.datetime.now()
    base = "%s-%s-%d-%s" % (root, _safe_part(peer_name), peer_id, when.strftime("%Y%m%dT%H%M%S"))
    path, n = base + ext, 2
    while os.path.exists(path):
        path, n = "%s-%d%s" % (base, n, ext), n + 1
    return path


def record_folder_problem(template: str) -> Optional[str]:
    """Why the folder of ``--record`` cannot be used or created, or None."""
    folder = os.path.dirname(os.path.abspath(template))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return "%s is not a folder" % (existing,)
    if not os.access(existing, os.W_OK | os.X_OK):
        return "cannot %s folder %s" % ("write to" if existing == folder else "create a folder in", existing)
    return None
