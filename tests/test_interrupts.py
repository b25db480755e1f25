"""Tests for zfjax.interrupts: a Ctrl-C that Python drops in a finalizer is still seen."""

import signal

import pytest

from helpers import press_ctrl_c_inside_a_finalizer
from zfjax import interrupts


def test_python_drops_a_ctrl_c_raised_inside_a_finalizer(unraisable):
    """Why the watch exists: with Python's own handler the press is only reported to
    sys.unraisablehook ("Exception ignored in ...") and the program goes on."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    press_ctrl_c_inside_a_finalizer()
    assert unraisable == [KeyboardInterrupt]


def test_a_watch_stops_at_the_next_check_after_a_dropped_press_and_says_nothing(unraisable):
    with interrupts.watched() as watch:
        watch.check()  # nothing pressed yet
        press_ctrl_c_inside_a_finalizer()
        with pytest.raises(KeyboardInterrupt):
            watch.check()
    assert unraisable == []  # no "Exception ignored" traceback on stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    press_ctrl_c_inside_a_finalizer()  # after the block: Python's own ways again
    assert unraisable == [KeyboardInterrupt]


def test_a_watch_passes_on_other_dropped_exceptions(unraisable):
    class Broken:
        def __del__(self):
            raise ValueError("in a finalizer")

    with interrupts.watched():
        Broken()
    assert unraisable == [ValueError]


def test_a_press_inside_a_watch_still_raises_at_once():
    with pytest.raises(KeyboardInterrupt), interrupts.watched():
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the press did not raise")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_raises_only_once_the_block_has_ended():
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupts.watched():
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
            finished.append("save")
        finished.append("after")
    assert finished == ["save"]
    with interrupts.deferred():  # nothing pressed: nothing raised
        finished.append("quiet")
    assert finished == ["save", "quiet"]
