"""Fixtures shared across test modules."""

import signal

import pytest

# How the test process handles Ctrl-C and SIGTERM when it starts (Python's KeyboardInterrupt, and the default).
SIGNALS_AT_START = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}


@pytest.fixture(autouse=True)
def signal_handlers_as_at_start():
    """Every test starts and ends with the process's first signal handlers, none of them blocked. In the whole suite
    something left SIGINT ignored or blocked in the test process (Lightning ignores it while it tears down a process
    group, `_destroy_dist_connection`, and after a KeyboardInterrupt), and every later process a test started
    inherited that: a Ctrl-C test's fit ignored the Ctrl-C and ran on to its last step (CI)."""
    def restore():
        for number, handler in SIGNALS_AT_START.items():
            signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS_AT_START)  # a blocked signal is inherited too

    restore()
    yield
    restore()


@pytest.fixture(scope="session")
def trained_stages(tmp_path_factory):
    """Teachers and a stage-2 checkpoint of the tiny backbone, trained once per test run in a folder of their
    own (`helpers.train_shared_stages`). Modules take a copy (`helpers.stages_in`), so a test that damages or
    resumes its copy changes nothing another module reads."""
    from helpers import train_shared_stages  # Lightning: imported only when an end-to-end test asks

    return train_shared_stages(tmp_path_factory.mktemp("stages"))
