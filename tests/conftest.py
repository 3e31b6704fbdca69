"""Fixtures shared across test modules."""

import signal

import pytest

# Python's own handling of Ctrl-C and SIGTERM (KeyboardInterrupt, and the default), whatever the suite inherited.
PYTHON_SIGNALS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@pytest.fixture(autouse=True)
def python_signal_handlers():
    """Every test starts and ends with Python's own signal handlers, none of them blocked. A suite started as a
    background job of a non-interactive shell (`bash scripts/test.sh &`, as a CI runner may) inherits SIGINT
    ignored, and so did every fit a test started: the Ctrl-C test's fit ignored its Ctrl-C and ran on."""

    def restore():
        for number, handler in PYTHON_SIGNALS.items():
            signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PYTHON_SIGNALS)  # a blocked signal is inherited too

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
