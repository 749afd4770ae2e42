"""The `broker` command: a FlaskGroup whose app is built lazily, per command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, ScriptInfo
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from broker.config import ConfigError
from broker.db import schema_missing
from broker.errors import BrokerError
from broker.keys import CryptoError

if TYPE_CHECKING:
    from broker.server import MtlsListener


def _create_app() -> Flask:
    from broker import create_app

    # Keys load on first use, so `--help`, `init` and `emulator` need none.
    return create_app(require_keys=False)


def _database_problem(exc: SQLAlchemyError) -> str:
    """Return one line saying what went wrong with the database and what to do about it."""
    orig = getattr(exc, "orig", None)
    reason = (str(orig).splitlines() or ["database error"])[0] if orig else "database error"
    if schema_missing(exc):
        return f"the database schema is missing or out of date ({reason}); run `broker db upgrade`"
    if isinstance(exc, OperationalError):
        return (
            f"database unavailable ({reason}); run `broker init` or check BROKER_DATABASE_URL"
        )
    return f"database error: {type(exc).__name__}"


class BrokerGroup(FlaskGroup):
    """FlaskGroup that turns known failures into one line and exit status 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The app is fixed: Flask's --app/--env-file/--debug options would only mislead.
        self.params = [p for p in self.params if p.name not in {"app", "env_file", "debug"}]

    def _load_plugin_commands(self) -> None:
        """Show only the broker's own commands (no third-party `flask` plugins)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException("configuration: " + "; ".join(exc.problems)) from None
        except BrokerError as exc:
            raise click.ClickException(exc.description) from None
        except CryptoError as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            raise click.ClickException(_database_problem(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("BROKER_DEBUG"):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}; set BROKER_DEBUG=1 for details"
            ) from None


@click.group(
    cls=BrokerGroup,
    create_app=_create_app,
    add_default_commands=False,
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
)
@click.version_option(
    package_name="gmail-token-broker", prog_name="broker", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Gmail OAuth token broker: people connect Gmail, jobs get tokens under policy.

    Settings come from BROKER_* environment variables (see the README); the instance folder
    (BROKER_INSTANCE_PATH, default ./instance) holds the SQLite database and key files.
    Start with `broker demo`, or `broker init` then `broker serve` and `broker worker`.
    """


@cli.command()
def init() -> None:
    """Create the instance folder, secret key, master key and schema (idempotent).

    Files are created with mode 0600 and never overwritten; run it again after an upgrade to
    migrate the schema.
    """
    from broker.cli.bootstrap import initialise

    for line in initialise(current_app._get_current_object()):  # type: ignore[attr-defined]
        click.echo(line)


@cli.group()
def db() -> None:
    """Upgrade or downgrade the database schema (Alembic migrations shipped in the package)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head, the newest)."""
    from broker.db import get_db
    from broker.migrate import upgrade

    upgrade(get_db().engine, revision)
    click.echo(f"upgraded to {revision}")


@db.command("downgrade")
@click.argument("revision", default="-1")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (default: -1, one revision back); may drop data."""
    from broker.db import get_db
    from broker.migrate import downgrade

    downgrade(get_db().engine, revision)
    click.echo(f"downgraded to {revision}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; a non-loopback address needs --behind-proxy")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on")
@click.option("--workers", type=click.IntRange(1, 64),
              help="gunicorn worker processes (default: two per core; one on SQLite)")
@click.option("--threads", type=click.IntRange(1, 5000),
              help="threads per worker (default: 4; 8 on SQLite); under gevent, greenlets "
                   "(connections) per worker (default: 1000)")
@click.option("--worker-class", type=click.Choice(["gevent", "gthread"]),
              help="gevent (default on PostgreSQL: hundreds of proxied Gmail calls in flight "
                   "per worker) or gthread (default on SQLite)")
@click.option("--dev", is_flag=True, help="Flask's development server (never in production)")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, readable=True),
              envvar="BROKER_TLS_CERT",
              help="with --mtls-port: the server's chain (PEM, leaf first, no root); also "
                   "BROKER_TLS_CERT")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, readable=True),
              envvar="BROKER_TLS_KEY",
              help="with --mtls-port: the server's private key (PEM); also BROKER_TLS_KEY")
@click.option("--mtls-port", type=click.IntRange(1, 65535),
              help="also listen here with TLS 1.3 in gunicorn, asking for client certificates "
                   "(RFC 8705 jobs); a port of its own so browsers never see a prompt")
@click.option("--behind-proxy", is_flag=True,
              help="a buffering reverse proxy fronts this server (needed to bind a public "
                   "address; also BROKER_BEHIND_PROXY=on)")
def serve(
    host: str, port: int, workers: int | None, threads: int | None, worker_class: str | None,
    dev: bool, tls_cert: str | None, tls_key: str | None, mtls_port: int | None, behind_proxy: bool,
) -> None:
    """Serve the broker with gunicorn (or Flask's development server with --dev).

    Run `broker worker` beside it: it refreshes ahead, chains the audit log and delivers
    webhooks. /healthz and /readyz answer once the broker is up.
    """
    from broker.db import get_db
    from broker.keys import get_keys
    from broker.server import (
        bind_problem,
        default_worker_class,
        run_gunicorn,
        run_gunicorn_pair,
        sensible_workers,
    )

    problem = bind_problem(host, behind_proxy or current_app.config["BROKER"].BEHIND_PROXY)
    if problem:
        raise click.ClickException(problem)
    listener = _mtls_listener(tls_cert, tls_key, mtls_port, port, dev)
    get_keys()  # a missing or malformed master key stops start-up here
    if dev:
        # Never Werkzeug's interactive debugger, even with BROKER_DEBUG: it runs code for
        # whoever reaches the port.
        current_app.run(host=host, port=port, threaded=True, use_reloader=False,
                        use_debugger=False, use_evalex=False)
        return
    sqlite = get_db().is_sqlite
    if sqlite and workers and workers > 1:
        click.echo("SQLite: serving with one worker process and threads (asked for "
                   f"{workers}); use PostgreSQL for more processes", err=True)
    kind = worker_class or default_worker_class(sqlite)
    n_workers, n_threads = sensible_workers(sqlite, workers, threads, kind)
    each = "greenlets" if kind == "gevent" else "threads"
    click.echo(f"broker on http://{host}:{port} ({n_workers} {kind} workers x {n_threads} "
               f"{each})")
    if listener is None:
        run_gunicorn(host, port, n_workers, n_threads, kind)
        return
    click.echo(f"mTLS listener on https://{host}:{listener.port} (TLS 1.3, client certificates)")
    sys.exit(run_gunicorn_pair(host, port, listener, n_workers, n_threads, kind))


def _mtls_listener(
    cert: str | None, key: str | None, mtls_port: int | None, port: int, dev: bool
) -> MtlsListener | None:
    """Check the mTLS options and the server chain as peers will read it; None without them."""
    import datetime as dt

    from broker.server import MtlsListener
    from broker.tls import TlsConfigError, check_chain

    if mtls_port is None:
        typed = click.get_current_context().get_parameter_source("tls_cert")
        if (cert or key) and typed is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--tls-cert and --tls-key go with --mtls-port")
        return None  # BROKER_TLS_CERT alone only names the chain for the inventory
    if not (cert and key):
        raise click.UsageError("--mtls-port needs --tls-cert and --tls-key")
    if dev or mtls_port == port:
        raise click.UsageError("--mtls-port needs gunicorn (not --dev) and a port of its own")
    try:
        report = check_chain(Path(cert).read_bytes(), dt.datetime.now(dt.UTC),
                             Path(key).read_bytes())
    except TlsConfigError as exc:
        raise click.ClickException(f"{cert}: {exc}") from None
    if not report.ok:  # the same rules as `broker certs check`
        raise click.ClickException(f"{cert}: " + "; ".join(report.problems))
    return MtlsListener(mtls_port, cert, key)


@cli.command(with_appcontext=False)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="the broker's port on 127.0.0.1")
@click.option("--emulator-port", default=8081, show_default=True, type=click.IntRange(1, 65535),
              help="the Google emulator's port on localhost")
def demo(port: int, emulator_port: int) -> None:
    """Run the emulator, the broker and its worker on loopback with a demo tenant.

    Creates what is missing in the instance folder (reused on the next run), prints the demo
    accounts and a ready curl line; Ctrl-C stops all three. No Google account is needed.
    """
    from broker.cli.demo import run

    run(port, emulator_port)


def _register_commands() -> None:
    from broker.cli import audit as cli_audit
    from broker.cli import certs as cli_certs
    from broker.cli import clients as cli_clients
    from broker.cli import keys as cli_keys
    from broker.cli import risc as cli_risc
    from broker.cli import tenants as cli_tenants
    from broker.cli import workload as cli_workload

    for module in (cli_tenants, cli_keys, cli_clients, cli_audit, cli_certs, cli_risc,
                   cli_workload):
        for command in module.COMMANDS:
            cli.add_command(command)
    try:
        from broker.emulator.cli import emulator_command
    except ImportError:  # pragma: no cover - the emulator ships with the package
        return
    cli.add_command(emulator_command, "emulator")


_register_commands()


def main() -> None:
    """Run the `broker` console script."""
    cli.main(args=sys.argv[1:], prog_name="broker", obj=ScriptInfo(create_app=_create_app,
             load_dotenv_defaults=False, set_debug_flag=False))
