"""``tollgate-analytics query "SELECT …"`` and ``tollgate-analytics report <name>``: SQL and
canned reports over the Parquet dataset, printed as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from tollgate_analytics import reports
from tollgate_analytics.query import Catalog, QueryError, render
from tollgate_analytics.settings import AnalyticsSettings

COMMANDS = ("query", "report", "reports")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    query = sub.add_parser("query", help="run SQL over the views logs and usage")
    query.add_argument("sql")
    report = sub.add_parser("report", help="a canned report; 'today' shows the usual three")
    report.add_argument("name", choices=["today", *reports.REPORTS])
    report.add_argument("--day", help="last day of the window, YYYY-MM-DD (default today, UTC)")
    report.add_argument("--days", type=int, default=1, help="days in the window (default 1)")
    sub.add_parser("reports", help="list the canned reports")
    for p in (query, report):
        p.add_argument("--format", choices=["table", "csv", "json"], default="table")
        p.add_argument("--data", help="dataset location (default: the service's settings)")
    return parser


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    if args.command == "reports":
        for name, r in reports.REPORTS.items():
            out.write(f"{name:20} {r.title}\n")
        return 0
    settings = AnalyticsSettings()
    catalog = Catalog(args.data or settings.location, settings.pyarrow_s3_options())
    try:
        if args.command == "query":
            out.write(render(catalog.query(args.sql), args.format) + "\n")
            return 0
        params = reports.window(args.day, args.days)
        names = reports.TODAY if args.name == "today" else (args.name,)
        for name in names:
            report = reports.REPORTS[name]
            if args.format == "table":
                last = params["until"] - timedelta(days=1)
                span = (
                    f"{last:%Y-%m-%d}"
                    if args.days == 1
                    else f"{params['since']:%Y-%m-%d} .. {last:%Y-%m-%d}"
                )
                out.write(f"\n{report.title}, {span} UTC\n")
            out.write(render(catalog.query(report.sql, params), args.format) + "\n")
    except QueryError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    return 0
