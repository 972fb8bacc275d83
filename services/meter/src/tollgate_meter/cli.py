"""``tollgate-meter-admin``: tiers, per-principal limits and usage, straight from Postgres.

    tollgate-meter-admin tiers
    tollgate-meter-admin set-tier gold --window daily:trailing:86400:input=50000,output=90000 \\
                                      --window monthly:calendar-month:input=1000000 --rank 20
    tollgate-meter-admin set-principal alice --tier gold
    tollgate-meter-admin set-principal bob --window daily:trailing:86400:total=1000
    tollgate-meter-admin usage alice
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.api import report_json
from tollgate_meter.limits import TierConfig, TierSpec, WindowSpec
from tollgate_meter.settings import MeterSettings


def parse_window(text: str) -> WindowSpec:
    """``name:trailing:SECONDS:input=N,output=N`` or ``name:calendar-month:total=N``."""
    parts = text.split(":")
    if len(parts) < 3:
        raise argparse.ArgumentTypeError(f"bad window {text!r}")
    name, kind = parts[0], parts[1]
    fields: dict[str, Any] = {"name": name, "kind": kind}
    rest = parts[2:]
    if kind == "trailing":
        fields["seconds"] = int(rest.pop(0))
    for item in ",".join(rest).split(","):
        if item:
            key, _, value = item.partition("=")
            fields[key] = int(value)
    try:
        return WindowSpec.model_validate(fields)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


async def _run(args: argparse.Namespace) -> Any:
    settings = MeterSettings()
    engine = create_engine(settings.database, application_name="meter-admin")
    ledger = PostgresLedger(
        engine, TierConfig.load(settings.tiers_file), bucket_seconds=settings.bucket_seconds
    )
    try:
        if args.command == "tiers":
            return {
                n: json.loads(t.model_dump_json(exclude_none=True))
                for n, t in sorted((await ledger.tiers()).items())
            }
        if args.command == "set-tier":
            spec = TierSpec(windows=tuple(args.window), rank=args.rank)
            await ledger.set_tier(args.name, spec)
            return json.loads(spec.model_dump_json(exclude_none=True))
        if args.command == "set-principal":
            windows = tuple(args.window) if args.window else None
            await ledger.set_principal(args.principal, args.tier, windows)
            return await ledger.principal_limits(args.principal)
        if args.command == "usage":
            groups = tuple(g for g in args.groups.split(",") if g)
            return report_json(await ledger.report(args.principal, groups, datetime.now(UTC)))
        raise AssertionError(args.command)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="tollgate-meter-admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tiers", help="list tiers (file and admin-set)")
    tier = sub.add_parser("set-tier", help="create or replace a tier")
    tier.add_argument("name")
    tier.add_argument("--window", type=parse_window, action="append", default=[])
    tier.add_argument("--rank", type=int, default=0)
    principal = sub.add_parser("set-principal", help="a principal's tier or own windows")
    principal.add_argument("principal")
    principal.add_argument("--tier")
    principal.add_argument("--window", type=parse_window, action="append")
    usage = sub.add_parser("usage", help="a principal's windows and month-to-date usage")
    usage.add_argument("principal")
    usage.add_argument("--groups", default="")
    args = parser.parse_args()
    result = asyncio.run(_run(args))
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
