"""``python -m neuralda`` and the ``neuralda`` command."""

import signal
import sys


def run() -> int:
    """The command line; a Ctrl-C while it loads (~0.1 s) ends it as one during a command does: exit 130, no
    traceback (a second Ctrl-C while Python exits included)."""
    try:
        from neuralda.cli import main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
