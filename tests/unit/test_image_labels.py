"""Builds give images only the labels something looks images up by: each is a build step."""

from __future__ import annotations

from hershy.adapters.docker.build import image_labels
from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_PROGRAM, LABEL_USER


def test_an_image_carries_its_host_program_and_user_and_nothing_else() -> None:
    # The Host (reaping), the program (teardown, cut-off builds), the user (the only
    # cache their builds may use): one LABEL step each in Docker's legacy builder.
    assert image_labels("host1", "prog-1", "alice") == {
        LABEL_MANAGED: "host1",
        LABEL_PROGRAM: "prog-1",
        LABEL_USER: "alice",
    }


def test_an_image_of_no_user_carries_no_user_label() -> None:
    assert image_labels("host1", "prog-1", "") == {LABEL_MANAGED: "host1", LABEL_PROGRAM: "prog-1"}
