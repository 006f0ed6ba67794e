"""The demo that `fhirserver run` loads into an empty database, and the login help it prints."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from seed_data import accounts, generator
from seed_data.loader import StoreSink, Summary, load

DEMO_SEED = 1
DEMO_SCALE = "small"


def is_empty(store) -> bool:
    """No Patient and no seed insurer yet: a fresh database."""
    return store.db["Patient"].estimated_document_count() == 0 and \
        store.reader.current("Organization", "org-insurer") is None


def progress_load(groups, sink, estimate: int, label: str, batch_size: int = 250, workers: int = 2,
                  conditional: bool = False) -> Summary:
    """`load` under a click progress bar showing the count, the percentage and the rate."""
    import time

    started = last = time.perf_counter()
    done = 0
    plain = not sys.stderr.isatty()  # click draws no bar into a file: a line every 30 s instead
    with click.progressbar(length=max(estimate, 1), label=label, show_pos=True, show_percent=True,
                           item_show_func=lambda rate: rate, file=sys.stderr) as bar:

        def step(n: int) -> None:
            nonlocal done
            done += n
            elapsed = time.perf_counter() - started
            bar.update(min(n, max(0, bar.length - bar.pos)), f"{done / elapsed:.0f} resources/s" if elapsed else "")
            nonlocal last
            if plain and time.perf_counter() - last >= 30:
                last = time.perf_counter()
                click.echo(f"{label}: {done} of about {estimate} resources in {elapsed:.0f} s, "
                           f"{done / elapsed:.0f} resources/s", err=True)

        summary = load(groups, sink, batch_size=batch_size, workers=workers, progress=step,
                       conditional=conditional)
    return summary


def seed_if_empty(settings, today: date | None = None) -> list[str]:
    """Load the small demo and its accounts in this process when the database is empty; return what to print."""
    from fhirserver.store.database import Store

    store = Store(settings.database_uri, settings.db_name, settings.db_timeout, settings.commit_timeout)
    lines: list[str] = []
    anchor = today or date.today()
    if is_empty(store):
        summary = progress_load(generator.groups(DEMO_SEED, DEMO_SCALE, anchor), StoreSink(store, settings.base_url),
                                generator.estimate(DEMO_SCALE), "loading the small demo", workers=1)
        lines += ["demo data: " + summary.lines()[0]]
    made = accounts.create_accounts(store.db, DEMO_SEED, DEMO_SCALE, anchor, Path(settings.state_dir) / "keys")
    lines += made.lines(settings.base_url)
    store.db.client.close()
    return lines
