"""API keys: which ones the service takes, and whether a request carries one of them.

Keys come from the settings (`auth.api_keys`), an environment variable (`auth.api_key_env`,
comma-separated) and a key file (`auth.api_key_file`, one key a line), all valid at once. The
file is read again whenever it changes, so keys rotate without a restart: add the new key,
move the clients, remove the old one. Only SHA-256 digests of the keys are kept, compared
with `hmac.compare_digest` (equal length whatever the key, so the time says nothing about
it); no key is ever logged. With no key configured the service is open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from serve_app.config import AuthSettings

logger = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def read_key_file(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def a_key(settings: AuthSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """One key the service takes (for the launcher's own readiness checks); None if open."""
    keys = [*settings.api_keys, *environ.get(settings.api_key_env, "").split(",")]
    if settings.api_key_file:
        keys += read_key_file(Path(settings.api_key_file).expanduser())
    return next((k.strip() for k in keys if k.strip()), None)


class APIKeys:
    def __init__(self, settings: AuthSettings, environ: Mapping[str, str] = os.environ) -> None:
        from_env = [k.strip() for k in environ.get(settings.api_key_env, "").split(",")]
        self._fixed = tuple(_digest(k) for k in (*settings.api_keys, *from_env) if k)
        self._file = Path(settings.api_key_file).expanduser() if settings.api_key_file else None
        self._file_keys: tuple[bytes, ...] = ()
        self._file_stamp: tuple[int, int, int] | None = None
        # A configured key file turns keys on even while it is empty: then nothing gets in.
        self.enabled = bool(self._fixed) or self._file is not None
        if not self.enabled:  # a warning, so that it shows at Ray's default log level
            logger.warning("API keys off: no key configured, every endpoint is open")
        if self._file is not None:
            self._file.stat()  # a missing file is a deployment error, raised here
            self._refresh()

    def _refresh(self) -> None:
        """Reread the key file if it changed; keep the last keys if it cannot be read now (a
        rotation that replaces the file is not an outage)."""
        assert self._file is not None
        try:
            st = self._file.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._file_stamp:
                return
            keys = read_key_file(self._file)
        except OSError as e:
            logger.warning("API key file %s unreadable, keeping its last keys: %s", self._file, e)
            return
        self._file_keys = tuple(_digest(k) for k in keys)
        self._file_stamp = stamp
        logger.info("API key file %s read: %d keys", self._file, len(keys))

    def describe(self) -> str:
        if not self.enabled:
            return "off (no API key configured: every endpoint is open)"
        file_part = f", {len(self._file_keys)} from {self._file}" if self._file else ""
        return f"on ({len(self._fixed)} fixed keys{file_part})"

    def valid(self, key: str | None) -> bool:
        if not self.enabled:
            return True
        if not key:
            return False
        if self._file is not None:
            self._refresh()
        presented = _digest(key)
        # Every key is compared, so the time does not tell which one (if any) matched.
        matched = False
        for known in (*self._fixed, *self._file_keys):
            matched |= hmac.compare_digest(presented, known)
        return matched
