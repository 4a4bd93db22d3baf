"""Credentials: from the environment or ``crm.secrets_file``, never from the config itself."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from syncengine.config.values import SECRET_ENV, CrmConfig, Secrets
from syncengine.errors import SecretsError

__all__ = ["load_secrets"]


def load_secrets(crm: CrmConfig, environ: Mapping[str, str]) -> Secrets:
    """Collect credentials: the environment wins over ``crm.secrets_file``, key by key.

    Needs a ready access token, or all of client id, client secret and refresh token. A named secrets
    file must be readable even when the environment has everything, so a wrong path never goes unseen.
    """
    looked = ["the environment (" + ", ".join(SECRET_ENV.values()) + ")"]
    from_file: dict[str, str] = {}
    if crm.secrets_file is not None:
        from_file = _read_secrets_file(crm.secrets_file)
        looked.append(f"secrets_file {crm.secrets_file}")
    found: dict[str, str | None] = {}
    for name, variable in SECRET_ENV.items():
        value = environ.get(variable, "").strip() or from_file.get(name, "").strip()
        found[name] = value or None
    secrets = Secrets(**found)
    if secrets.access_token or (secrets.client_id and secrets.client_secret and secrets.refresh_token):
        return secrets
    missing = [SECRET_ENV[n] for n in ("client_id", "client_secret", "refresh_token") if not found[n]]
    raise SecretsError(
        "no usable Zoho credentials: need ZOHO_ACCESS_TOKEN, or all of ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET"
        f" and ZOHO_REFRESH_TOKEN (missing: {', '.join(missing)}); looked in {' and '.join(looked)}"
    )


def _read_secrets_file(path: Path) -> dict[str, str]:
    """A TOML file, or an env-style file of ``KEY=value`` lines (``export`` and quotes allowed).

    Keys may be written ``client_secret`` or ``ZOHO_CLIENT_SECRET``; other keys are ignored, since an
    env file is often shared with other tools. No message ever quotes the file's content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretsError(f"secrets_file {path} cannot be read: {reason}") from None
    pairs: dict[str, object]
    try:
        pairs = dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        pairs = _parse_env_lines(path, text)
    by_alias = {alias.lower(): name for name, env in SECRET_ENV.items() for alias in (name, env)}
    result: dict[str, str] = {}
    for key, value in pairs.items():
        name = by_alias.get(key.lower())
        if name is None:
            continue
        if not isinstance(value, str):
            raise SecretsError(f"secrets_file {path}: {key} must be a string")
        result[name] = value
    return result


def _parse_env_lines(path: Path, text: str) -> dict[str, object]:
    pairs: dict[str, object] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise SecretsError(f"secrets_file {path}: line {number} is neither TOML nor KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs[key.strip()] = value
    return pairs
