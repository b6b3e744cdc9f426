"""Every metric the service declares (service/metrics.py) is checked by some test where its
event happens: a metric added without one fails here, naming it."""

from pathlib import Path

from simclr_embed.service.metrics import Metrics

TESTS = Path(__file__).resolve().parents[1]


def test_every_declared_metric_is_checked_by_a_test() -> None:
    names = {m.name for m in Metrics().registry.collect()}
    text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py")
                     if p.name != Path(__file__).name)
    unchecked = sorted(n for n in names if n not in text)
    assert len(names) >= 18 and not unchecked, unchecked
