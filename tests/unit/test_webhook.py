"""Webhook requests: signatures, the two event forms, and which sources a push concerns."""

from __future__ import annotations

import json

import pytest

from gitmesh.sync import webhook
from gitmesh.sync.source import Ref, RefKind, Source

SECRET = b"It's a Secret to Everybody"
BODY = b"Hello, World!"


def test_signature_matches_githubs_documented_example() -> None:
    # The example in GitHub's "Validating webhook deliveries".
    assert webhook.signature(SECRET, BODY) == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (webhook.signature(SECRET, BODY), True),
        (None, False),
        ("", False),
        (webhook.signature(b"another secret", BODY), False),
        (webhook.signature(SECRET, BODY + b" "), False),
        (webhook.signature(SECRET, BODY).replace("sha256=", "sha1="), False),
    ],
    ids=["signed", "unsigned", "empty", "other-secret", "other-body", "other-algorithm"],
)
def test_verify(header: str | None, ok: bool) -> None:
    assert webhook.verify(SECRET, BODY, header) is ok


def github_push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "repository": {
                "clone_url": "https://github.com/acme/mesh.git",
                "ssh_url": "git@github.com:acme/mesh.git",
                "html_url": "https://github.com/acme/mesh",
                "default_branch": "main",
            },
        }
    ).encode()


DEFAULT_BRANCH = Ref()


def source(url: str = "https://github.com/acme/mesh", ref: Ref = DEFAULT_BRANCH) -> Source:
    return Source("mesh", url, ref)


@pytest.mark.parametrize(
    ("src", "body", "concerned"),
    [
        (source(), github_push(), True),
        (source("git@github.com:acme/mesh.git"), github_push(), True),
        (source("ssh://git@github.com/acme/mesh"), github_push(), True),
        (source("https://user:token@GitHub.com/acme/mesh.git/"), github_push(), True),
        (source("https://github.com/acme/other"), github_push(), False),
        (source(ref=Ref(RefKind.BRANCH, "main")), github_push(), True),
        (source(ref=Ref(RefKind.BRANCH, "dev")), github_push(), False),
        (source(), github_push("refs/heads/dev"), False),
        (source(ref=Ref(RefKind.TAG, "v1")), github_push("refs/tags/v1"), True),
        (source(ref=Ref(RefKind.TAG, "v1")), github_push("refs/tags/v2"), False),
        (source(ref=Ref(RefKind.SEMVER, ">=1")), github_push("refs/tags/v2"), True),
        (source(ref=Ref(RefKind.SEMVER, ">=1")), github_push(), False),
        (source(ref=Ref(RefKind.COMMIT, "abc")), github_push(), False),
    ],
)
def test_which_sources_a_github_push_concerns(src: Source, body: bytes, concerned: bool) -> None:
    push = webhook.parse("push", body)
    assert push is not None
    assert webhook.concerns(push, src) is concerned


def test_the_generic_form_names_a_source_or_a_repository() -> None:
    by_name = webhook.parse(None, b'{"source": "mesh"}')
    assert by_name is not None and webhook.concerns(by_name, source())
    assert not webhook.concerns(by_name, Source("other", "https://github.com/acme/mesh"))
    by_repo = webhook.parse(None, b'{"repository": "https://github.com/acme/mesh.git"}')
    assert by_repo is not None and webhook.concerns(by_repo, source(ref=Ref(RefKind.BRANCH, "any")))
    local = Source("local", "/srv/git/mesh")
    by_path = webhook.parse(None, b'{"repository": "file:///srv/git/mesh.git", "ref": "refs/heads/main"}')
    assert by_path is not None and webhook.concerns(
        by_path, Source("l", "/srv/git/mesh", Ref(RefKind.BRANCH, "main"))
    )
    assert not webhook.concerns(by_path, Source("l", "/srv/git/mesh", Ref(RefKind.BRANCH, "dev")))
    assert local.url == "/srv/git/mesh"


def test_ping_asks_for_nothing() -> None:
    assert webhook.parse("ping", b'{"zen": "Keep it logically awesome."}') is None


@pytest.mark.parametrize(
    ("event", "body", "message"),
    [
        ("push", b"{not json", "the body is not JSON"),
        ("push", b"[]", "not a JSON object"),
        ("push", b"{}", "a push event without a repository"),
        ("issues", b"{}", "GitHub event 'issues' is not handled"),
        (None, b'{"what": 1}', 'expected {"source": NAME}'),
    ],
)
def test_bad_events_are_refused_with_a_reason(event: str | None, body: bytes, message: str) -> None:
    with pytest.raises(webhook.BadEvent, match=message.replace("(", r"\(").replace("{", r"\{")):
        webhook.parse(event, body)
