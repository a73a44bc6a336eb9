"""`hxp compose env`: create env/*.env from env/*.env.example, with fresh secrets.

In an example file, ``__NAME__`` is a secret: every ``__NAME__`` in every file gets
the same value (so DATABASE_URL in gateway.env matches POSTGRES_PASSWORD in
postgres.env), taken from the environment variable NAME when set, otherwise a new
random one. ``${NAME}`` is copied from the environment (empty when unset), e.g.
HF_TOKEN. Existing env files are never overwritten.

The compose files find the env files through ``HXP_ENV_DIR``, which this step adds to
the project's ``.env`` (read by Compose; its other lines are kept): until then
``docker compose`` stops with a message that names ``make env``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from hxp.core.paths import PROJECT_ROOT

SECRET = re.compile(r"__([A-Z][A-Z0-9_]*)__")
FROM_ENVIRONMENT = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
SUFFIX = ".example"
ENV_DIR_VARIABLE = "HXP_ENV_DIR"


def fill(text: str, values: dict[str, str]) -> str:
    """Substitute placeholders outside comments; new secrets are added to ``values`` for later files."""

    def secret(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            values[name] = os.environ.get(name) or secrets.token_hex(24)
        return values[name]

    def line(text: str) -> str:
        if text.lstrip().startswith("#"):
            return text
        return FROM_ENVIRONMENT.sub(lambda m: os.environ.get(m.group(1), ""), SECRET.sub(secret, text))

    return "".join(line(part) for part in text.splitlines(keepends=True))


def assignments(text: str) -> dict[str, str]:
    """The ``KEY=value`` lines of an env file."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def secret_values(template: str, value: str) -> dict[str, str] | None:
    """The secrets in ``value``, an env file's line made from the example's ``template`` (None: it does not fit)."""
    names = SECRET.findall(template)
    pattern = SECRET.sub("(.+?)", re.escape(template).replace(r"\$\{", "${").replace(r"\}", "}"))
    found = re.fullmatch(FROM_ENVIRONMENT.sub(".*?", pattern), value)
    return dict(zip(names, found.groups())) if found else None


def _known_secrets(env_dir: Path) -> dict[str, str]:
    """Secrets already in the existing env files, read back through their examples' lines."""
    values: dict[str, str] = {}
    for example in sorted(env_dir.glob(f"*.env{SUFFIX}")):
        real = example.with_suffix("")
        if not real.exists():
            continue
        present = assignments(real.read_text())
        for key, template in assignments(example.read_text()).items():
            if not SECRET.search(template) or key not in present:
                continue
            found = secret_values(template, present[key])
            if found:
                values.update({n: v for n, v in found.items() if n not in values})
    return values


def env_dir(project: Path = PROJECT_ROOT) -> Path:
    """The env folder Compose uses: HXP_ENV_DIR from the environment, else from the project's .env, else env/."""
    dotenv = project / ".env"
    configured = os.environ.get(ENV_DIR_VARIABLE) or (
        assignments(dotenv.read_text()).get(ENV_DIR_VARIABLE) if dotenv.is_file() else None
    )
    return project / (configured or "env")


def register_env_dir(env_dir: Path) -> Path | None:
    """Add HXP_ENV_DIR to the .env next to ``env_dir`` unless it is there; returns .env when it changed."""
    dotenv = env_dir.parent / ".env"
    text = dotenv.read_text() if dotenv.exists() else ""
    if ENV_DIR_VARIABLE in assignments(text):
        return None
    separator = "" if not text or text.endswith("\n") else "\n"
    dotenv.write_text(
        f"{text}{separator}# Where Compose reads the env files (written by `make env`).\n"
        f"{ENV_DIR_VARIABLE}=./{env_dir.name}\n"
    )
    return dotenv


def create(env_dir: Path = PROJECT_ROOT / "env") -> list[Path]:
    """Create each missing env file from its example, then register the folder in .env; returns what changed."""
    values = _known_secrets(env_dir)
    created = []
    for example in sorted(env_dir.glob(f"*.env{SUFFIX}")):
        real = example.with_suffix("")
        if real.exists():
            continue
        real.write_text(fill(example.read_text(), values))
        real.chmod(0o600)
        created.append(real)
    dotenv = register_env_dir(env_dir)
    return created + ([dotenv] if dotenv else [])
