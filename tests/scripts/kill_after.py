"""`sing` with the driver SIGKILLed right after N shards were written (their records reached it:
the kill-and-resume test; the model actors write the shards):

    python tests/scripts/kill_after.py N [sing arguments ...]

A real SIGKILL at a known point mid-run; the fault injection lives here, not in the write path."""
import os
import signal
import sys

from pipelines.cli import main
from pipelines.stages import collect


def _arm(n: int) -> None:
    shard = collect.ShardTally.shard
    done = [0]

    def written_then_maybe_die(self, *args, **kwargs):
        shard(self, *args, **kwargs)
        done[0] += 1
        if done[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    collect.ShardTally.shard = written_then_maybe_die


if __name__ == "__main__":
    _arm(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
