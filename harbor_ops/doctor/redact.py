"""Secrets out of everything a support bundle holds, three ways at once.

A maintainer needs the configs and logs, never the passwords in them. Keys alone are not
enough (a password echoed into a log line has no key), values alone are not enough (a
secret harborctl was never told about, in Harbor's own env files), so every text passes
three filters: PEM private-key blocks and age secret keys, ``key = value`` pairs whose key
names a secret, and every secret value the site resolves to, wherever it appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
SECRET_WORD = re.compile(r"(password|passwd|secret|token|accesskey|access_key|credential|"
                         r"private_key_pem|_key$|^key$)", re.I)
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                      re.S)
_AGE_KEY = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+")
# KEY=VALUE (env files), KEY: VALUE (YAML), "KEY": "VALUE" (JSON)
_PAIR = re.compile(r"""(?P<k>["']?[A-Za-z_][\w.-]*["']?)(?P<sep>\s*[:=]\s*)"""
                   r"""(?P<v>"[^"\n]*"|'[^'\n]*'|[^\s,}\n]+)""")
MIN_SECRET_LEN = 4  # shorter values would redact ordinary words


def is_secret_key(key: str) -> bool:
    name = key.strip("\"'")
    if name.endswith(("_file", "_env", "_path")):  # where a secret lives, not the secret
        return False
    return bool(SECRET_WORD.search(name))


def redact_mapping(node: Any) -> Any:
    """A copy with every secret-named value, and every ``K_file``/``K_env``, as <redacted>."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            for suffix in ("_file", "_env"):
                if str(key).endswith(suffix) and is_secret_key(str(key)[: -len(suffix)]):
                    out[str(key)[: -len(suffix)]] = REDACTED
                    break
            else:
                out[key] = REDACTED if is_secret_key(str(key)) and not isinstance(
                    value, dict | list) else redact_mapping(value)
        return out
    if isinstance(node, list):
        return [redact_mapping(v) for v in node]
    return node


def secret_values(node: Any) -> set[str]:
    """Every string under a secret-named key of a (resolved) mapping."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and is_secret_key(str(key)):
                found.add(value)
            else:
                found |= secret_values(value)
    elif isinstance(node, list):
        for v in node:
            found |= secret_values(v)
    return found


class Redactor:
    """Scrubs texts: PEM keys, secret-named pairs, and the known secret values."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = sorted({v.strip() for v in values if len(v.strip()) >= MIN_SECRET_LEN},
                             key=len, reverse=True)

    def add(self, *values: str) -> None:
        self.__init__([*self.values, *values])  # type: ignore[misc]

    def text(self, text: str) -> str:
        text = _PEM_KEY.sub(f"-----{REDACTED} PRIVATE KEY-----", text)
        text = _AGE_KEY.sub(REDACTED, text)
        text = _PAIR.sub(self._pair, text)
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text

    @staticmethod
    def _pair(m: re.Match[str]) -> str:
        if not is_secret_key(m.group("k")) or m.group("v").strip("\"'") in ("", REDACTED):
            return m.group(0)
        quote = m.group("v")[0] if m.group("v")[0] in "\"'" else ""
        return f"{m.group('k')}{m.group('sep')}{quote}{REDACTED}{quote}"
