"""
The TURN shared secret (``--turn-secret-file``): read from a file at start,
re-read on demand (``TurnSecret.reload``, for a reload signal), never logged.

It is the string coturn has as ``static-auth-secret``; whitespace around it
(the newline an editor or ``openssl rand -hex 32 > FILE`` leaves) is not
part of it.
"""

from __future__ import annotations

from pcsignal import logs

log = logs.logger("pcsignal.server")

# A secret is a line of text; anything longer was not meant as one.
MAX_SECRET_BYTES = 4096


class UnusableSecretFile(ValueError):
    """The secret file cannot be read or holds no secret; str() says why."""


def read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise UnusableSecretFile("cannot read %s: %s" % (path, e.strerror or e))
    if len(data) > MAX_SECRET_BYTES:
        raise UnusableSecretFile("%s is longer than %d bytes: not a secret" % (path, MAX_SECRET_BYTES))
    secret = data.strip()
    if not secret:
        raise UnusableSecretFile("%s is empty" % (path,))
    return secret


class TurnSecret:
    """The secret from a file; ``value`` is what the credentials are made with."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value = read_secret(path)

    def reload(self) -> bool:
        """Read the file again; if it is unusable, keep the old secret and log why."""
        try:
            self.value = read_secret(self.path)
        except UnusableSecretFile as e:
            log.error("kept the previous TURN secret: {reason}", reason=str(e))
            return False
        log.info("TURN secret read again from {path}", path=self.path)
        return True

    def __repr__(self) -> str:
        return "<TurnSecret from %s>" % (self.path,)
