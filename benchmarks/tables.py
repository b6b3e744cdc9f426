"""Markdown tables made from the committed benchmark results, for the documentation site
(docs/hooks.py turns `<!-- table: NAME -->` into `render(NAME)`): a figure on a page is the one
in the JSON, never a copy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

RESULTS = Path("benchmarks/results")


def _load(root: Path, name: str) -> dict:
    return json.loads((root / RESULTS / name).read_text())


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bold(ms: float | None) -> str:
    return "(not recorded)" if ms is None else f"**{ms:.2f}**"


def _growth(d: dict) -> str:
    rows = []
    for s in d["steps"]:
        filt = "" if not s["filter_fraction"] else (
            f"{s['filtered_search']['p50_ms']:.2f}, {s['filtered_recall_at_10']:.3f}")
        rows.append([s["step"], f"{s['index']}, {s['size']:,}",
                     f"{s['search']['p50_ms']:.2f} / {s['search']['p99_ms']:.2f}",
                     f"{s['healthz']['p50_ms']:.2f}", f"{s['search_over_healthz_p50_ms']:.2f}",
                     _bold(s.get("search_over_healthz_paired_p50_ms")),
                     f"{s['recall_at_10']:.4f}", _self_hit(s), filt, f"{s['rss_mb']:.0f}"])
    e = d["events"]
    restart = e["restart_to_readyz_s"]
    restart = restart["median"] if isinstance(restart, dict) else restart
    dels, during, hw = e["delete_1000_ids_s"], e["search_during_deletes"], d["hardware"]
    events = (f"\nAdds {e['add_vectors_per_s']:,.0f} vectors/s through the API; a 1,000-id delete "
              f"{dels['p50_ms']:.0f} ms p50 ({dels['p99_ms']:.0f} p99), searches meanwhile "
              f"{during['p50_ms']:.1f} ms p50 ({during['p99_ms']:.1f} p99); deleted ids "
              f"returned: {e['deleted_ids_returned']}; restart to `/readyz` **{restart:.2f} s** "
              f"(median of 3). {hw['cpu_model']}, {hw['cpu_count']} cores, commit "
              f"{hw['commit']}.\n")
    return _table(["step", "index, size", "search p50 / p99 (ms)", "/healthz p50 (ms)",
                   "difference of p50s (ms)", "p50 of paired differences (ms)", "recall@10",
                   "own first hit (k=1)",
                   "~1 % filter: p50 (ms), recall@10", "RSS (MB)"], rows) + events


def _self_hit(step: dict) -> str:
    hit = step.get("self_hit_k1")  # recorded since #39
    return f"{hit['found']:,} of {hit['n']:,}" if hit else "(not recorded)"


def gallery_growth(root: Path) -> str:
    return _growth(_load(root, "gallery_growth.json"))


def gallery_growth_random(root: Path) -> str:
    return _growth(_load(root, "gallery_growth_random.json"))


def gallery_growth_pgvector(root: Path) -> str:
    return _growth(_load(root, "gallery_growth_pgvector.json"))


def gallery_million(root: Path) -> str:
    d = _load(root, "gallery_million.json")
    b, s = d["build"], d["serve"]
    disk = sum(v for k, v in b["disk_mb"].items() if k.startswith("gallery-"))
    return _table(
        ["vectors", "index", "restart to /readyz (s)", "RSS (MB)", "search p50 / p99 (ms)",
         "over /healthz p50 (ms)", "recall@10", "adds/s (in process)", "on disk (MB)"],
        [[f"{d['vectors']:,}", s["index"], f"{s['restart_to_readyz_s']:.1f}",
          f"{s['rss_after_searches_mb']:.0f}",
          f"{s['search']['p50_ms']:.2f} / {s['search']['p99_ms']:.2f}",
          f"{s['search_over_healthz_p50_ms']:.2f}", f"{s['recall_at_10']:.4f}",
          f"{b['add_vectors_per_s']:,.0f}", f"{disk:,.0f}"]])


def search_hop(root: Path) -> str:
    d = _load(root, "search_hop.json")
    return _table(["search of one query, 200k HNSW", "p50 (ms)", "p95 (ms)", "p99 (ms)"],
                  [[k, f"{d[k]['p50_ms']:.3f}", f"{d[k]['p95_ms']:.3f}",
                    f"{d[k]['p99_ms']:.3f}"] for k in ("on the loop", "in a thread")]) + \
        f"\nThe hop, paired per query: {d['hop_p50_ms']:.3f} ms at p50.\n"


# The names a wrk run's result had before benchmarks/harness.py (6f87cc0): the committed
# model_swap.json (2 Dec) has them. Its req_per_s counted every answer; none was a non-2xx.
BEFORE_HARNESS = {"requests_per_s": "req_per_s", "failed": "socket_errors"}


def field(run: dict, key: str) -> float:
    return run[key] if key in run else run[BEFORE_HARNESS[key]]


def model_swap(root: Path) -> str:
    d = _load(root, "model_swap.json")

    def med(runs: list[dict], key: str) -> str:
        return f"{sorted(field(r, key) for r in runs)[len(runs) // 2]:.1f}"

    hey = d["hey_swap"]
    rows = [["wrk, no swap", med(d["wrk_baseline"], "requests_per_s"),
             med(d["wrk_baseline"], "p50_ms"), med(d["wrk_baseline"], "p99_ms"),
             sum(r["non2xx"] + field(r, "failed") for r in d["wrk_baseline"])],
            ["wrk, one swap a third of the way in", med(d["wrk_swap"], "requests_per_s"),
             med(d["wrk_swap"], "p50_ms"), med(d["wrk_swap"], "p99_ms"),
             sum(r["non2xx"] + field(r, "failed") for r in d["wrk_swap"])],
            ["hey, requests sent during the swap", "",
             med([r["during_swap"] for r in hey], "p50_ms"),
             med([r["during_swap"] for r in hey], "p99_ms"), sum(r["non2xx"] for r in hey)],
            ["hey, the other requests of those runs", "",
             med([r["outside_swap"] for r in hey], "p50_ms"),
             med([r["outside_swap"] for r in hey], "p99_ms"), ""]]
    mem = d["memory_mb"]
    return _table([f"{d['clients']} clients, {d['seconds']} s, medians of {d['rounds']} rounds",
                   "req/s", "p50 (ms)", "p99 (ms)", "non-2xx + socket errors"], rows) + (
        f"\nSIGHUP to the new model answering: {med(d['wrk_swap'], 'swap_s')} s (median); to "
        f"the old one drained: {med(d['wrk_swap'], 'drained_s')} s. Server RSS: "
        f"{med(mem, 'one_model')} MB with {d['bundles'][0]} alone, {med(mem, 'two_models')} MB "
        f"with {d['bundles'][1]} beside it: **{d['extra_model_mb_median']:.0f} MB** for the "
        "second model (median of the rounds' differences).\n")


def swap_freeze(root: Path) -> str:
    d = _load(root, "swap_freeze.json")
    runs = [("before (" + d["baseline"]["commit"] + ")", r) for r in d["baseline"]["rounds"]]
    runs += [(f"after ({d['hardware']['commit']})", r) for r in d["rounds"]]
    rows = [[name, f"{r['gallery_vectors']:,}", f"{r['swap_s']:.2f}",
             r["healthz_during_swap"]["n"], f"{r['healthz_during_swap']['p50_ms']:.1f}",
             f"{r['healthz_during_swap']['p99_ms']:.1f}",
             f"**{r['healthz_during_swap']['max_ms']:.1f}**", r["embeds_non2xx"]]
            for name, r in runs]
    return _table(["code", "gallery vectors", "swap (s)", "/healthz calls during the swap",
                   "p50 (ms)", "p99 (ms)", "longest (ms)", "embeds non-2xx"], rows)


def settings(root: Path) -> str:
    from simclr_embed.service.settings import settings_table

    return settings_table()


TABLES: dict[str, Callable[[Path], str]] = {
    f.__name__: f for f in (gallery_growth, gallery_growth_random, gallery_growth_pgvector,
                            gallery_million, model_swap, search_hop, settings, swap_freeze)}


def render(name: str, root: Path) -> str:
    if name not in TABLES:
        raise KeyError(f"no table {name!r}; the tables are {', '.join(sorted(TABLES))}")
    return TABLES[name](root)
