"""Status rates: the change per second over the last seconds, bounded memory."""

from flyprep.daemon.rates import RateWindow


def test_rates_are_the_change_over_the_window():
    rates = RateWindow(window_s=5.0, max_samples=64)
    assert rates.rates("s") is None
    rates.sample("s", 0.0, {"written": 0})
    assert rates.rates("s") is None  # one sample says nothing yet
    for t in range(1, 21):  # 10 frames/s for 10 s, then 100 frames/s for 10 s
        rates.sample("s", float(t), {"written": 10 * t})
    for t in range(21, 41):
        rates.sample("s", float(t) / 2 + 10.0 + 0.0, {"written": 200 + 50 * (t - 20)})
    assert rates.rates("s") == {"written": 100.0}  # the old rate is out of the window
    rates.forget("s")
    assert rates.rates("s") is None


def test_samples_per_key_are_bounded():
    rates = RateWindow(window_s=1e9, max_samples=8)
    for t in range(10_000):
        rates.sample("s", float(t), {"n": t})
    assert len(rates._samples["s"]) == 8
    assert rates.rates("s") == {"n": 1.0}
