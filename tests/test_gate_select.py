"""Sweep selection never picks a trial that its parity gate rejected (``metrics.rejected``)."""

from pipelines.config.select import Select, choose


def test_rejected_trials_are_skipped_even_when_fastest():
    summaries = {
        0: {"throughput": 900.0, "rejected": 1.0},
        1: {"throughput": 500.0, "rejected": 0.0},
        2: {"throughput": 400.0},
    }
    assert choose(Select("throughput", "max"), summaries, {}) == (1, "")
    assert choose(None, {0: {"rejected": 1.0}, 1: {}}, {})[0] == 1


def test_all_rejected_takes_the_first_and_says_so():
    idx, note = choose(Select("throughput", "max"), {0: {"rejected": 1.0}, 1: {"rejected": 1.0}}, {})
    assert idx == 0 and "rejected by its parity gate" in note
