"""`python -m bench keys`: hand-out throughput with a local master and with a SoftHSM2 master.

Both brokers serve the same kind of data set in the same run, measured in interleaved rounds;
with data keys cached, the HSM is asked once per data key per worker and never on the hot path.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from typing import Any

from bench import data, load
from bench.load import Result
from bench.run import TENANTS, Dataset, Run, measure, preflight, scripts, summarise
from broker.keys import EnvKeyProvider, Keyring, KeyService, RemoteOptions, init_hsm_key

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin"
USERS = 1_000


def _softhsm(run: Run) -> dict[str, str]:
    """Initialise a token in the run's work folder; return the environment that finds it."""
    root = run.stack.workdir / "softhsm"
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n", encoding="utf-8")
    env = {"SOFTHSM2_CONF": str(conf)}
    os.environ.update(env)  # this process creates the key and loads the data set through it
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench",
                    "--so-pin", "bench-so", "--pin", PIN], check=True, capture_output=True)
    init_hsm_key(MODULE, "bench", "bench-master", PIN)
    return env


def keys(run: Run) -> dict[str, Any]:
    """Measure the token API with the master in a key file and in SoftHSM2, interleaved."""
    env = _softhsm(run)
    reference = f"pkcs11:module={MODULE};token=bench;key=bench-master"
    options = RemoteOptions(pin=PIN)
    service = KeyService(Keyring(EnvKeyProvider(reference, options)))
    emulator = run.emulator()
    datasets: dict[str, Dataset] = {}
    for label, keyring in (("file", run.keys), ("hsm", service)):
        name = run.stack.postgres.create(f"keys-{label}")
        url = run.stack.postgres.url(name)
        tenants = data.prepare(url, keyring, TENANTS, prefix=f"{label}")
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)
        seconds = data.bulk_load(url, keyring, data.Load(tenants, 0, USERS, expires),
                                 log=run.log)
        datasets[label] = Dataset(name, url, tenants, USERS, seconds)
    key_file = run.stack.workdir / "master.keys"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(run.stack.master_keys + "\n")
    extra = {
        "file": {"BROKER_MASTER_KEYS": "", "BROKER_MASTER_KEYS_FILE": str(key_file)},
        "hsm": {"BROKER_MASTER_KEYS": reference, "BROKER_PKCS11_PIN": PIN, **env},
    }
    procs = {}
    for label, dataset in datasets.items():
        broker_env = run.stack.broker_env(dataset.name, emulator, **extra[label])
        procs[label] = run.stack.gunicorn(f"broker-keys-{label}", "broker.wsgi:app", broker_env,
                                          run.options.workers, run.options.threads)
        if not preflight(run, procs[label].url, dataset):
            return {"available": False, "reason": f"the {label} broker refused a hand-out"}
    lua = {label: scripts(run, d, f"keys-{label}")["token"] for label, d in datasets.items()}
    run.log(f"keys: file vs SoftHSM2 master, N={USERS:,} each, {run.options.rounds} round(s) "
            f"of {run.options.duration:.0f}s")
    for label, proc in procs.items():
        load.run_wrk("warmup", proc.url, lua[label], 32, run.options.warmup)
    runs: dict[str, list[Result]] = {}
    for number in range(run.options.rounds):
        # Alternate who goes first: on a shared machine, load drifts within a round.
        order = list(procs.items())[:: -1 if number % 2 else 1]
        for clients in (1, 32):
            for label, proc in order:
                runs.setdefault(f"{label}@{clients}", []).append(
                    measure(run, f"master={label}", proc, lua[label], clients))
    out: dict[str, Any] = {"available": True, **{k: summarise(v) for k, v in runs.items()}}
    for clients in (1, 32):
        base = out[f"file@{clients}"]["rps"]
        out[f"hsm_over_file@{clients}"] = out[f"hsm@{clients}"]["rps"] / base if base else 0.0
    return out
