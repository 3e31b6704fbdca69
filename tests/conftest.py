"""Fixtures shared across test modules."""

import pytest


@pytest.fixture(scope="session")
def trained_stages(tmp_path_factory):
    """Teachers and a stage-2 checkpoint of the tiny backbone, trained once per test run in a folder of their
    own (`helpers.train_shared_stages`). Modules take a copy (`helpers.stages_in`), so a test that damages or
    resumes its copy changes nothing another module reads."""
    from helpers import train_shared_stages  # Lightning: imported only when an end-to-end test asks

    return train_shared_stages(tmp_path_factory.mktemp("stages"))
