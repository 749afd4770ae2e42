"""Options several `broker …` commands share, with one help text each."""

from __future__ import annotations

import click

tenant = click.option(
    "--tenant", "slug", required=True, metavar="SLUG",
    help="the tenant's slug, as `broker tenant list` shows it",
)
as_json = click.option(
    "--json", "as_json", is_flag=True, help="print one JSON document instead of text",
)
yes = click.option("--yes", is_flag=True, help="do not ask for confirmation (for scripts)")
