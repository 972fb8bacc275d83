"""Entrypoint: ``tollgate-analytics`` runs the Faust worker."""

from __future__ import annotations

import sys

from tollgate_analytics.app import create_app
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core import telemetry


def main() -> None:
    settings = AnalyticsSettings()
    tel = telemetry.configure_tracing(settings.telemetry, "analytics")
    app = create_app(settings)
    try:
        if len(sys.argv) == 1:
            sys.argv += ["worker", "--loglevel", settings.telemetry.log_level.lower()]
        app.main()
    finally:
        tel.shutdown()
