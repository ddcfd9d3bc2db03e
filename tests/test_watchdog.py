"""with_stall_timeout: a stalled stream ends with StallError, a slow consumer does not."""
import threading
import time

import pytest

from pipelines.stages.watchdog import StallError, with_stall_timeout


def test_items_pass_through_in_order_and_errors_surface():
    assert list(with_stall_timeout(iter(range(5)), 1.0)) == [0, 1, 2, 3, 4]
    assert list(with_stall_timeout(iter(range(3)), None)) == [0, 1, 2]

    def boom():
        yield 1
        raise KeyError("from the producer")

    with pytest.raises(KeyError, match="from the producer"):
        list(with_stall_timeout(boom(), 1.0))


def test_a_stalled_producer_raises_after_the_timeout():
    release = threading.Event()

    def stuck():  # like Ray Data waiting for objects on a dead node
        yield "a"
        release.wait()
        yield "never"

    got, t0 = [], time.perf_counter()
    with pytest.raises(StallError, match="rerun the same command"):
        for x in with_stall_timeout(stuck(), 0.3, "test stream"):
            got.append(x)
    waited = time.perf_counter() - t0
    release.set()
    assert got == ["a"] and 0.3 <= waited < 3.0


def test_time_spent_by_the_consumer_does_not_count():
    out = []
    for x in with_stall_timeout(iter(range(3)), 0.2):
        time.sleep(0.4)  # slower than the timeout, but the producer is never waited on
        out.append(x)
    assert out == [0, 1, 2]
