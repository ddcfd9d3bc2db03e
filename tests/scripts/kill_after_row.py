"""`sing` with the driver SIGKILLed right after the N-th leaderboard row saying ok was written
(the leaderboard's kill-and-resume test):

    python tests/scripts/kill_after_row.py N [sing arguments ...]
"""
import os
import signal
import sys

from pipelines.cli import main
from pipelines.jobs.leaderboard import summary


def _arm(n: int) -> None:
    write = summary.write_row
    done = [0]

    def write_then_maybe_die(results, slug, board, row):
        write(results, slug, board, row)
        done[0] += row.get("status") == "ok"
        if done[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    summary.write_row = write_then_maybe_die


if __name__ == "__main__":
    _arm(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
