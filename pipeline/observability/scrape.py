"""Reading a running process's /metrics: for `fxstream status`, the demo's view and the tests.

The endpoints of the processes of a state directory are found in their status files
(pipeline.process_status: each worker and sink records where it serves them).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Samples:
    """The samples of one scrape: (sample name, labels) -> value."""

    values: dict[tuple[str, Labels], float]

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample named ``name`` with exactly these labels."""
        return self.values.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample named ``name`` whose labels include these."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and want <= ls)

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(ls), v) for (n, ls), v in self.values.items() if n == name]


def parse(text: str) -> Samples:
    values: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Samples(values)


def scrape(url: str, timeout_s: float = 2.0) -> Samples:
    """GET ``url``/metrics; raises OSError (URLError) when nothing answers."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as response:
        return parse(response.read().decode())


def probe(url: str, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """(HTTP status, body) of ``url``/``path`` (/healthz or /readyz); OSError when nothing
    answers."""
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:  # 503 and the like: an answer all the same
        return exc.code, exc.read().decode()


def endpoints(statuses: Iterable[dict[str, Any]]) -> list[str]:
    """The metrics URLs of running processes, each once, from their status records."""
    urls: list[str] = []
    for record in statuses:
        url = record.get("metrics")
        if record.get("state") in ("running", "waiting") and url and url not in urls:
            urls.append(url)
    return urls


def scrape_all(urls: Iterable[str], timeout_s: float = 2.0) -> dict[str, Samples]:
    """The scrapes of those that answer."""
    out = {}
    for url in urls:
        try:
            out[url] = scrape(url, timeout_s)
        except (OSError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    lag: int


def lag_rows(scrapes: Iterable[Samples]) -> list[LagRow]:
    """fxstream_consumer_lag of every scrape, per group, topic and partition; a partition
    reported twice (a rebalance between two scrapes) keeps the greater lag."""
    rows: dict[tuple[str, str, int], int] = {}
    for samples in scrapes:
        for labels, value in samples.series("fxstream_consumer_lag"):
            key = (labels.get("group", ""), labels.get("topic", ""),
                   int(labels.get("partition", "-1")))
            rows[key] = max(rows.get(key, 0), int(value))
    return [LagRow(g, t, p, lag) for (g, t, p), lag in sorted(rows.items())]


def total_lag(rows: Iterable[LagRow], group: str, topic: str) -> int | None:
    """The lag of ``group`` on ``topic`` summed over its partitions; None when no
    process reported it."""
    found = [r.lag for r in rows if r.group == group and r.topic == topic]
    return sum(found) if found else None


@dataclass(frozen=True)
class Throughput:
    """What one agent or table of a process counted since the process started."""

    url: str
    kind: str  # "worker" | "sink"
    name: str  # the agent or the table
    records_in: int
    records_out: int  # worker: records published; sink: rows inserted or updated
    dead_letters: int


def throughput(url: str, samples: Samples) -> list[Throughput]:
    out = []
    for labels, value in samples.series("fxstream_worker_records_in_total"):
        agent = labels["agent"]
        out.append(Throughput(
            url, "worker", agent, int(value),
            int(samples.total("fxstream_worker_records_out_total", agent=agent)),
            int(samples.total("fxstream_dead_letters_total", stage="worker", source=agent))))
    for labels, value in samples.series("fxstream_sink_records_in_total"):
        table = labels["table"]
        written = (samples.total("fxstream_sink_rows_out_total", table=table, op="insert")
                   + samples.total("fxstream_sink_rows_out_total", table=table, op="update"))
        out.append(Throughput(
            url, "sink", table, int(value), int(written),
            int(samples.total("fxstream_dead_letters_total", stage="sink", source=table))))
    return out
