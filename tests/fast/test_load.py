"""The in-flight meter that replicas report to the autoscaler for the work Serve does not count."""
from ensemble.load import InFlight


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_mean_is_the_time_average_since_the_last_reading():
    clock = Clock()
    meter = InFlight(clock)
    meter.count(2)
    clock.t = 1.0
    meter.count(-1)  # two for one second, then one for three
    clock.t = 4.0
    assert meter.mean() == 5 / 4 and meter.now == 1
    clock.t = 6.0
    assert meter.mean() == 1.0
