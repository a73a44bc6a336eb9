"""API keys in the project's own ``api_keys`` table; only a SHA-256 hash of each secret is stored.

A secret is ``sk-hxp-`` followed by 43 URL-safe random characters (256 bits), so a
plain SHA-256 is enough: there is nothing to brute-force. The secret is returned
once, by :meth:`KeyStore.create` and :meth:`KeyStore.rotate`, and never stored.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hxp.core import catalogue
from hxp.core.database import Database
from hxp.gateway import extensions

SECRET_PREFIX = "sk-hxp-"
ALL = "*"  # every model, or every collection


def _collections() -> list[str]:
    """The collections a key may be granted (:data:`hxp.gateway.extensions.COLLECTIONS`)."""
    return [name for source in extensions.COLLECTIONS for name in extensions.resolve(source)()]


class KeyStoreError(ValueError):
    """The request to create or change a key is invalid; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class KeyNotFound(KeyStoreError):
    """No key has this alias or id."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def expiry(expires: str | None = None, days: float | None = None) -> datetime | None:
    """An expiry time from an ISO 8601 date/time (UTC when no zone is given) or a number of days from now."""
    if expires and days is not None:
        raise KeyStoreError("give an expiry time or a number of days, not both", "expires")
    if days is not None:
        if days <= 0:
            raise KeyStoreError("days must be positive", "days")
        return datetime.now(UTC) + timedelta(days=days)
    try:
        return _as_datetime(expires) if expires else None
    except ValueError:
        raise KeyStoreError(
            f"invalid expiry time {expires!r}: use ISO 8601, e.g. 2030-01-31T00:00:00Z", "expires"
        ) from None


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never with its secret)."""

    key_id: str
    key_hash: str
    key_prefix: str
    alias: str
    owner: str | None
    models: tuple[str, ...]  # empty: every model
    read_collections: tuple[str, ...]  # ("*",): every collection; searched and used for retrieval
    write_collections: tuple[str, ...]  # (): none; documents upserted and deleted
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: datetime | None
    created_at: datetime | None
    revoked_at: datetime | None

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def may_read(self, collection: str) -> bool:
        return ALL in self.read_collections or collection in self.read_collections

    def may_write(self, collection: str) -> bool:
        return ALL in self.write_collections or collection in self.write_collections

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why this key may not be used now, or None."""
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return f"API key '{self.alias}' was revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return f"API key '{self.alias}' expired at {self.expires_at.isoformat()}"
        return None

    def issued(self, secret: str) -> dict[str, Any]:
        """The key's fields with its secret, for the one answer that shows it."""
        return {"key": secret, **self.public()}

    def public(self) -> dict[str, Any]:
        """The key's fields for display (the hash left out)."""
        out = asdict(self)
        out.pop("key_hash")
        for name in ("models", "read_collections", "write_collections"):
            out[name] = list(out[name])
        for name in ("expires_at", "created_at", "revoked_at"):
            out[name] = out[name].isoformat() if out[name] else None
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        allowed = row["allowed_models"] or ALL
        return cls(
            key_id=row["key_id"],
            key_hash=row["key_hash"],
            key_prefix=row["key_prefix"],
            alias=row["alias"],
            owner=row["owner"],
            models=() if allowed == ALL else _names(allowed),
            read_collections=_names(row["read_collections"]),
            write_collections=_names(row["write_collections"]),
            rpm_limit=row["rpm_limit"],
            tpm_limit=row["tpm_limit"],
            expires_at=_as_datetime(row["expires_at"]),
            created_at=_as_datetime(row["created_at"]),
            revoked_at=_as_datetime(row["revoked_at"]),
        )


def _check_known(field: str, names: list[str], known: list[str]) -> None:
    unknown = [n for n in names if n not in known and n != ALL]
    if unknown:
        raise KeyStoreError(
            f"unknown {field.replace('_', ' ')}: {', '.join(unknown)} (known: {', '.join(known)})", field
        )


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n for n in (text or "").split(",") if n)


_COLUMNS = (
    "key_id, key_hash, key_prefix, alias, owner, allowed_models, read_collections, write_collections, "
    "rpm_limit, tpm_limit, expires_at, created_at, revoked_at"
)


class KeyStore:
    """Create, look up, list, revoke and rotate keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        alias: str,
        owner: str | None = None,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: datetime | None = None,
        read_collections: list[str] | None = None,
        write_collections: list[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown this once). Collections: read every one and write none by default."""
        if not alias:
            raise KeyStoreError("alias is required", "alias")
        if self.db.fetchone("SELECT key_id FROM api_keys WHERE alias = ?", (alias,)):
            raise KeyStoreError(f"a key with alias '{alias}' already exists", "alias")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise KeyStoreError(f"{name} must be a positive integer", name)
        _check_known("models", models or [], catalogue.load().names)
        collections = _collections()
        reads = [ALL] if read_collections is None else read_collections
        writes = write_collections or []
        _check_known("read_collections", reads, collections)
        _check_known("write_collections", writes, collections)
        secret = _new_secret()
        now = datetime.now(UTC)
        self.db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                hash_secret(secret),
                secret[: len(SECRET_PREFIX) + 4],
                alias,
                owner,
                ",".join(models) if models else ALL,
                ",".join(reads),
                ",".join(writes),
                rpm,
                tpm,
                _as_datetime(expires_at),
                now,
                None,
            ),
        )
        return self.get(alias), secret

    def get(self, ref: str) -> ApiKey:
        """A key by alias or key id."""
        row = self.db.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE alias = ? OR key_id = ?", (ref, ref))
        if row is None:
            raise KeyNotFound(f"no API key with alias or id '{ref}'")
        return ApiKey.from_row(row)

    def lookup_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this secret hash, revoked or expired ones included; None when unknown."""
        row = self.db.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return ApiKey.from_row(row) if row else None

    def list(self) -> list[ApiKey]:
        return [ApiKey.from_row(r) for r in self.db.fetchall(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")]

    def revoke(self, ref: str) -> ApiKey:
        key = self.get(ref)
        if key.revoked_at is None:
            self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (datetime.now(UTC), key.key_id))
        return self.get(key.key_id)

    def set_grants(
        self,
        ref: str,
        read_collections: builtins.list[str] | None = None,  # list: the method above
        write_collections: builtins.list[str] | None = None,
    ) -> ApiKey:
        """Replace a key's collection grants (each left as it is when None)."""
        key = self.get(ref)
        collections = _collections()
        reads = list(key.read_collections) if read_collections is None else read_collections
        writes = list(key.write_collections) if write_collections is None else write_collections
        _check_known("read_collections", reads, collections)
        _check_known("write_collections", writes, collections)
        self.db.execute(
            "UPDATE api_keys SET read_collections = ?, write_collections = ? WHERE key_id = ?",
            (",".join(reads), ",".join(writes), key.key_id),
        )
        return self.get(key.key_id)

    def rotate(self, ref: str) -> tuple[ApiKey, str]:
        """Replace a live key's secret (the old one stops working); returns the new secret once."""
        key = self.get(ref)
        if key.refusal() is not None:
            raise KeyStoreError(f"cannot rotate: {key.refusal()}", "key")
        secret = _new_secret()
        self.db.execute(
            "UPDATE api_keys SET key_hash = ?, key_prefix = ? WHERE key_id = ?",
            (hash_secret(secret), secret[: len(SECRET_PREFIX) + 4], key.key_id),
        )
        return self.get(key.key_id), secret
