"""Manage API tokens: ``python -m dispatcher.tokens create|list|revoke``.

    python -m dispatcher.tokens create --role client
    python -m dispatcher.tokens create --role worker --worker-id host-a-*
    python -m dispatcher.tokens list
    python -m dispatcher.tokens revoke 3f9c0a1b2c3d

Uses the database the dispatcher uses (DATABASE_URL, .env). ``create`` prints the token
alone on stdout, once: only its SHA-256 is stored, so it cannot be shown again. A revocation
reaches every dispatcher within TOKEN_CACHE_SECONDS.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone

from dispatcher.auth import Role, new_token
from dispatcher.db import StoreError, open_store
from shared.config import ConfigError, load_config

WORKER_BINDING = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\*?")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dispatcher.tokens",
                                     description="Create, list and revoke API tokens.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a token and print it (once)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--worker-id", help="bind a worker token to this worker id "
                        "(a trailing * binds a prefix, e.g. host-a-*)")
    commands.add_parser("list", help="every token: id, role, binding, created, revoked")
    revoke = commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    return parser.parse_args(argv)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 1 for an unknown token, 2 for bad input."""
    args = _parse_args(argv)
    if getattr(args, "worker_id", None) is not None:
        if args.role != Role.WORKER.value:
            print("error: --worker-id binds worker tokens only", file=sys.stderr)
            return 2
        if not WORKER_BINDING.fullmatch(args.worker_id):
            print("error: --worker-id must be a worker id, optionally ending in *",
                  file=sys.stderr)
            return 2
    try:
        store = open_store(load_config())
    except (ConfigError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "create":
            token = new_token()
            store.add_token(token.token_id, token.secret_hash, args.role, args.worker_id)
            print(token.text)
        elif args.command == "list":
            print(f"{'id':<12}  {'role':<6}  {'binding':<20}  {'created':<20}  revoked")
            for row in store.tokens():
                print(f"{row['token_id']:<12}  {row['role']:<6}  {row['worker_id'] or '-':<20}  "
                      f"{_when(row['created_at']):<20}  {_when(row['revoked_at'])}")
        elif not store.revoke_token(args.token_id):
            print(f"error: no unrevoked token {args.token_id!r}", file=sys.stderr)
            return 1
        else:
            print(f"revoked {args.token_id}", file=sys.stderr)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
