"""The meter's Postgres ledger: reservations, time buckets and monthly periods.

One module per use case — :mod:`.admission`, :mod:`.settlement`, :mod:`.pruning`,
:mod:`.reports`, :mod:`.tiers` — over what they share (:mod:`.store`); :class:`PostgresLedger`
is all of them together, and keeps every promise of :class:`tollgate_meter.ports.Ledger`.

The engine does not ping connections before use (a round trip per admission). A pooled
connection that died — Postgres restarted — fails on its first statement; SQLAlchemy then
discards the pool's older connections and the ledger runs the operation once more on a fresh
one (:meth:`Store._run`). That is safe because every write here is idempotent by request id:
an admission whose commit did land is found as the earlier decision, a settlement as already
settled. While Postgres stays down the second attempt fails too, and the caller gets
:class:`~tollgate_core.errors.DependencyUnavailable`.
"""

from __future__ import annotations

from tollgate_meter.adapters.postgres.admission import AdmissionSql
from tollgate_meter.adapters.postgres.pruning import PruningSql
from tollgate_meter.adapters.postgres.reports import ReportSql
from tollgate_meter.adapters.postgres.settlement import SettlementSql
from tollgate_meter.adapters.postgres.store import create_engine
from tollgate_meter.adapters.postgres.tiers import TierSql

__all__ = ["PostgresLedger", "create_engine"]


class PostgresLedger(AdmissionSql, SettlementSql, PruningSql, ReportSql, TierSql):
    """The ledger in Postgres: every use case over one engine and one tier cache."""
