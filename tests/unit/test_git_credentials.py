"""Credentials in repository URLs: taken out before git sees the URL, and hidden in every message."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from gitmesh.controller import logs
from gitmesh.sync.git import redact, split_credentials
from gitmesh.sync.source import BasicAuth, Source


def header(pair: str) -> list[tuple[str, str]]:
    return [("http.extraHeader", "Authorization: Basic " + base64.b64encode(pair.encode()).decode())]


@pytest.mark.parametrize(
    ("url", "bare", "settings"),
    [
        ("https://deploy:s3cret@git.example/m.git", "https://git.example/m.git", header("deploy:s3cret")),
        ("http://deploy:s3cret@127.0.0.1:8080/m", "http://127.0.0.1:8080/m", header("deploy:s3cret")),
        ("https://deploy:p%40ss%3A@git.example/m", "https://git.example/m", header("deploy:p@ss:")),
        ("https://deploy:p@ss@git.example/m", "https://git.example/m", header("deploy:p@ss")),  # unquoted @
        ("https://ghp_token@github.com/o/r", "https://github.com/o/r", header("ghp_token:")),  # a token
        ("ssh://git:pw@git.example/m.git", "ssh://git@git.example/m.git", []),  # ssh never takes it
        ("ssh://git@git.example/m.git", "ssh://git@git.example/m.git", []),
        ("git@git.example:o/m.git", "git@git.example:o/m.git", []),
        ("https://git.example/m.git", "https://git.example/m.git", []),
        ("/srv/git/m.git", "/srv/git/m.git", []),
    ],
)
def test_credentials_are_split_from_the_url(url: str, bare: str, settings: list[tuple[str, str]]) -> None:
    assert split_credentials(url) == (bare, settings)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "fatal: unable to access 'https://deploy:s3cret@git.example/m/': 401",
            "fatal: unable to access 'https://***@git.example/m/': 401",
        ),
        ("https://ghp_token@github.com/o/r", "https://***@github.com/o/r"),
        ("https://u:p@ss@host/x and http://a:b@c/d", "https://***@host/x and http://***@c/d"),
        ("ssh://git:pw@host/m", "ssh://git:***@host/m"),
        ("ssh://git@host/m and git@host:o/m", "ssh://git@host/m and git@host:o/m"),
        ("https://git.example/m.git: not found", "https://git.example/m.git: not found"),
    ],
)
def test_messages_are_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_credentials_are_given_once() -> None:
    auth = BasicAuth("deploy", Path("/run/secrets/password"))
    with pytest.raises(ValueError, match="give them once"):
        Source("mesh", "https://deploy:s3cret@git.example/m.git", auth=auth)
    assert Source("mesh", "https://git.example/m.git", auth=auth).auth == auth


@pytest.mark.parametrize("inner", [logs.JsonFormatter(), logging.Formatter("%(levelname)s %(message)s")])
def test_log_lines_are_redacted_whoever_wrote_them(inner: logging.Formatter) -> None:
    args = ("https://hook:t0ken@chat.example/x", "refused")
    record = logging.LogRecord("gitmesh.rollout", logging.WARNING, __file__, 1, "webhook %s: %s", args, None)
    line = logs.Redacted(inner).format(record)
    assert "t0ken" not in line and "https://***@chat.example/x: refused" in line
