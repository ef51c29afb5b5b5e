"""Parsing of ``fairlane api`` and ``fairlane keys`` (no services)."""

from __future__ import annotations

import pytest

from fairlane.cli import build_parser


def test_api_takes_optional_modules_and_bounded_options() -> None:
    # Given the parser
    parser = build_parser()

    # When `api` is given nothing, or modules and every option
    bare = parser.parse_args(["api"])
    full = parser.parse_args(
        ["api", "app.tasks", "app.more", "--host", "0.0.0.0", "--port", "9000", "--workers", "4"]
    )

    # Then unset options stay None (settings decide) and set ones are kept
    assert (bare.modules, bare.host, bare.port, bare.workers) == ([], None, None, None)
    assert (full.modules, full.host, full.port, full.workers) == (
        ["app.tasks", "app.more"],
        "0.0.0.0",
        9000,
        4,
    )

    # And out-of-range ports and worker counts are refused
    for bad in (["--port", "0"], ["--port", "70000"], ["--workers", "0"], ["--workers", "65"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["api", *bad])


def test_keys_subcommands() -> None:
    # Given the parser
    parser = build_parser()

    # Then `keys create` needs a tenant, and takes --admin and --name
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "create"])
    created = parser.parse_args(["keys", "create", "--tenant", "acme", "--admin", "--name", "ci"])
    assert (created.tenant, created.admin, created.name) == ("acme", True, "ci")
    assert parser.parse_args(["keys", "create", "--tenant", "acme"]).admin is False

    # And `keys revoke` needs the key's id; `keys list --all` includes revoked keys
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "revoke"])
    assert parser.parse_args(["keys", "revoke", "fl_3e8f4957"]).key_id == "fl_3e8f4957"
    assert parser.parse_args(["keys", "list", "--all"]).all is True
