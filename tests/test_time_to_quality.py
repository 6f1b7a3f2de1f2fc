"""The time-to-quality benchmark's checks (``ptycho.benchmarks.time_to_quality``) on known curves."""

import pytest

from ptycho.benchmarks import time_to_quality
from ptycho.benchmarks.time_to_quality import Point, summarise
from ptycho.errors import ConfigError


def curve(method, ssims, seconds_per_sweep, offset_s=0.0, first=1):
    return [Point(method, first + i, offset_s + (i + 1) * seconds_per_sweep, a, p, 0.1) for i, (a, p) in enumerate(ssims)]


def test_summary_checks_five_sweeps_and_the_first_time_to_rpie_30():
    rpie = curve("rpie", [(0.5 + 0.015 * i, 0.4 + 0.015 * i) for i in range(30)], 0.1)  # rPIE-30: 0.935 / 0.835 at 3.0 s
    network = [Point("network", 0, 0.5, 0.6, 0.5, 0.2)]
    from_network = curve("network+rpie", [(0.93, 0.83)] * 30, 0.1, offset_s=0.5)  # reaches rPIE-30 - 0.01 at 0.6 s
    refine = curve("refine", [(0.52, 0.42)] * 29, 0.1, offset_s=0.5, first=2)  # never does; below rPIE-5 at sweep 5
    summary = summarise(network + rpie + from_network + refine, 30)
    assert summary["network+rpie_5_at_least_rpie_5"] is True
    assert summary["refine_5_at_least_rpie_5"] is False
    assert summary["first_reaching_rpie_30"]["network+rpie"] == {"sweep": 1, "seconds": 0.6}
    assert summary["first_reaching_rpie_30"]["refine"] is None
    assert summary["first_reaching_rpie_30"]["rpie"]["sweep"] == 30  # 0.92 / 0.82 at 29 falls short by more than the slack
    assert summary["network_based_faster_than_rpie_30"] is True


def test_unknown_families_and_short_runs_are_refused():
    with pytest.raises(ConfigError, match="--families: unknown"):
        time_to_quality.main(["--families", "ring,moon"])
    with pytest.raises(ConfigError, match="--max-sweeps: must be >= 30"):
        time_to_quality.main(["--max-sweeps", "5"])
