"""The exercise tests against wrong answers: what they say, and what share of the points they leave them.

A student's typical slips are written here (an im2col with its taps in the
wrong order, a residual add backward without the "1"), and so are the
tests' own loop oracles pasted in as answers. Each is put in place of the
reference with monkeypatch, the exercise tests run in this process, and the
checks are: the message names the slip (decoded indices, "tap order?", the
Python line counts and shapes), and the weighted share of the exercise's
points (sum of the weights of the passed tests over those of the counted
ones, as ``minires exercises grade`` counts) stays at about a third or less.
"""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

EXERCISES = Path(__file__).resolve().parent / "exercises"
sys.path.insert(0, str(EXERCISES))  # as pytest does for the files there: they import exercise_helpers

import exercise_helpers as helpers  # noqa: E402
import test_a1_autograd as a1  # noqa: E402
import test_a2_conv as a2  # noqa: E402
import test_a4_residual as a4  # noqa: E402

from minires import autograd, course  # noqa: E402
from minires.kernels import numpy_ref as ref  # noqa: E402
from minires.kernels._index import conv_output_size  # noqa: E402
from minires.residual import PadChannelsFunction  # noqa: E402

pytest_plugins = ["pytester"]

try:  # imported here, before any pytester fixture: an in-process run forgets the modules imported during
    import torch  # noqa: F401  it, and torch (a C extension) cannot be imported into one process twice
except ImportError:
    pass
pytestmark = pytest.mark.skipif(bool(course.handed_out()), reason="a student copy: these tests check the exercise "
                                "tests against the reference solutions")

REFERENCE_IM2COL = ref.im2col

SHARE_LIMIT = 0.34  # "about a third"


# ---------------------------------------------------------------- wrong answers

def im2col_wrong_tap_order(x, kh, kw, stride, padding):
    """A vectorised im2col whose rows run over (c, j, i) instead of (c, i, j): the reference's, rows permuted."""
    cols = REFERENCE_IM2COL(x, kh, kw, stride, padding)
    return cols.reshape(x.shape[1], kh, kw, -1).transpose(0, 2, 1, 3).reshape(cols.shape)


def col2im_assigning(cols, x_shape, kh, kw, stride, padding):
    """col2im_loop with = for +=: a pixel that several taps read keeps only the last entry."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = helpers.out_size(h, kh, sh, ph), helpers.out_size(w, kw, sw, pw)
    x = np.zeros(x_shape, dtype=cols.dtype)
    for (ci, i, j), (b, oy, ox) in itertools.product(np.ndindex(c, kh, kw), np.ndindex(n, oh, ow)):
        iy, ix = oy * sh + i - ph, ox * sw + j - pw
        if 0 <= iy < h and 0 <= ix < w:
            x[b, ci, iy, ix] = cols[(ci * kh + i) * kw + j, (b * oh + oy) * ow + ox]  # the slip: = for +=
    return x


def residual_add_backward_without_the_one(grad_out, y, relu):
    g = grad_out * (y > 0) if relu else grad_out
    return g, np.zeros_like(g)  # the slip: nothing through the shortcut


def conv2d_forward_by_the_loop(x, weight, stride, padding):
    return helpers.conv2d_loop(x, weight, stride, padding).astype(x.dtype)


def pad_forward_by_the_loop(self, x, out_channels, stride):
    self.shape, self.stride = x.shape, stride
    return a4.pad_loop(x, out_channels, stride)


def failure(test, *args):
    """The message ``test(*args)`` fails with (it must fail)."""
    with pytest.raises(pytest.fail.Exception) as info:
        test(*args)
    return str(info.value)


# ---------------------------------------------------------------- the messages

@pytest.mark.parametrize("kernel, stride, padding", a2.WINDOWS, ids=a2.WINDOW_IDS)
def test_a_wrong_tap_order_is_named_with_decoded_indices(monkeypatch, kernel, stride, padding):
    monkeypatch.setattr(ref, "im2col", im2col_wrong_tap_order)
    message = failure(a2.test_im2col_matches_the_loop, kernel, stride, padding)
    assert "tap order?" in message, message
    assert "row 1 (channel 0, tap (0, 1))" in message, message  # row 1 is tap (0, 1): the first one swapped
    assert "The row for channel 0, tap (0, 1) holds the values of tap (1, 0)" in message, message
    assert "column" in message and "(image 0, output (" in message, message
    assert "expected" in message and "got" in message


def test_a_wrong_tap_order_passes_only_the_1x1_case(monkeypatch):
    monkeypatch.setattr(ref, "im2col", im2col_wrong_tap_order)
    a2.test_im2col_of_a_1x1_kernel()  # one tap: nothing to get wrong
    for window in a2.VECTOR_WINDOWS:  # vectorised, but its values are checked first
        assert "tap order?" in failure(a2.test_im2col_is_vectorised, *window)
    assert "tap order?" in failure(a2.test_im2col_keeps_float64)


def test_columns_in_the_wrong_order_are_named(monkeypatch):
    def columns_image_last(x, kh, kw, stride, padding):
        cols = REFERENCE_IM2COL(x, kh, kw, stride, padding)
        n, _, h, w = x.shape
        oh, ow = conv_output_size(h, kh, stride[0], padding[0]), conv_output_size(w, kw, stride[1], padding[1])
        return cols.reshape(-1, n, oh, ow).transpose(0, 2, 3, 1).reshape(cols.shape)  # (oy, ox, n), not (n, oy, ox)

    monkeypatch.setattr(ref, "im2col", columns_image_last)
    message = failure(a2.test_im2col_matches_the_loop, *a2.WINDOWS[0])
    assert "column order?" in message and "holds the values of image 1, output (" in message, message
    assert "tap order?" not in message


def test_an_element_read_from_the_padding_says_so():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float64).reshape(2, 1, 3, 3) + 1
    cols = helpers.im2col_loop(x, 3, 3, (1, 1), (1, 1))
    got = cols.copy()
    got[0, 0] = 7.0  # tap (0, 0) at output (0, 0) reads x[0, 0, -1, -1]: the padding
    message = failure(helpers.check_cols, got, cols, "im2col", x.shape, (3, 3), (1, 1), (1, 1))
    assert "row 0 (channel 0, tap (0, 0)), column 0 (image 0, output (0, 0)): expected 0 (in the padding), " \
           "got 7" in message, message
    got = cols.copy()
    got[4, 9 + 4] = 0.0  # the centre tap at image 1, output (1, 1) reads x[1, 0, 1, 1]
    message = failure(helpers.check_cols, got, cols, "im2col", x.shape, (3, 3), (1, 1), (1, 1))
    assert "column 13 (image 1, output (1, 1)): expected 14 (x[1, 0, 1, 1]), got 0" in message, message
    assert "order?" not in message  # one wrong element is no permutation


def test_col2im_that_overwrites_overlaps_is_told_to_add(monkeypatch):
    monkeypatch.setattr(ref, "col2im", col2im_assigning)
    message = failure(a2.test_col2im_matches_the_loop, *a2.WINDOWS[2])
    assert "at image 0, channel 0, pixel (" in message, message
    assert "Only pixels that several taps read are wrong" in message and "np.add.at" in message, message


def test_an_image_shaped_result_names_image_channel_and_pixel():
    want = np.zeros((2, 3, 4, 5))
    got = want.copy()
    got[1, 2, 3, 0] = 1.0
    message = failure(helpers.check_image, got, want, "col2im")
    assert "1 of 120 elements are wrong; the first at image 1, channel 2, pixel (3, 0)" in message, message


# ---------------------------------------------------------------- counting lines

def test_the_line_count_is_flat_for_the_reference_and_grows_for_the_loop():
    small, large = np.ones((2, 3, 5, 6), np.float32), np.ones((12, 3, 10, 12), np.float32)
    window = (3, 3, (1, 1), (1, 1))
    ours = [helpers.count_lines(ref.im2col, (x,) + window, "x") for x in (small, small, large)]
    assert ours[1].lines == ours[2].lines > 0 and not ours[2].stopped
    loop = [helpers.count_lines(helpers.im2col_loop, (x,) + window, "x") for x in (small, large)]
    assert loop[1].lines > 20 * loop[0].lines / 2  # 24 times the outputs: about 24 times the lines
    stopped = helpers.count_lines(helpers.im2col_loop, (large,) + window, "x", limit=1000)
    assert stopped.stopped and stopped.result is None and 1000 < stopped.lines < 1010
    exempt = helpers.count_lines(lambda x: helpers.im2col_loop(x, *window), (large,), "x",
                                 exempt=(helpers.im2col_loop,))
    assert exempt.lines == 1  # the lambda's own line; the oracle it calls is not counted


@pytest.mark.parametrize("name, target, answer, test, args", [
    ("im2col", (ref, "im2col"), helpers.im2col_loop, a2.test_im2col_is_vectorised, a2.VECTOR_WINDOWS[0]),
    ("col2im", (ref, "col2im"), helpers.col2im_loop, a2.test_col2im_is_vectorised, a2.VECTOR_WINDOWS[1]),
], ids=["im2col", "col2im"])
def test_a_pasted_loop_oracle_fails_the_vectorisation_check(monkeypatch, name, target, answer, test, args):
    monkeypatch.setattr(*target, answer)
    message = failure(test, *args)
    assert message.startswith(f"{name}(") and " Python lines for x of shape 2x3x5x6 and more than " in message, message
    assert "for x of shape 12x3x10x12: a Python loop over pixels or images" in message, message
    assert "a loop over the kh*kw taps is fine" in message


def test_a_pasted_conv_loop_fails_with_the_oracles_it_calls_not_counted(monkeypatch):
    monkeypatch.setattr(ref, "conv2d_forward", conv2d_forward_by_the_loop)
    message = failure(a2.test_conv2d_forward_is_vectorised, monkeypatch, *a2.VECTOR_WINDOWS[0])
    assert "conv2d_forward(x, weight, kernel (3, 3)" in message and "a Python loop over pixels or images" in message


def test_oracle_accumulate_fails_the_in_place_check(monkeypatch):
    a1.test_accumulate_adds_the_third_gradient_in_place()  # the reference passes
    monkeypatch.setattr(autograd, "_accumulate", a1.oracle_accumulate)
    message = failure(a1.test_accumulate_adds_the_third_gradient_in_place)
    assert "the third gradient for one tensor made a new array" in message and "+=" in message, message
    a1.test_accumulate_sums_without_touching_the_arrays_it_was_given()  # the sums themselves are right


# ---------------------------------------------------------------- the share of the points

class Outcomes:
    """A pytest plugin: keeps one exercise's tests and records each one's weight and outcome."""

    def __init__(self, exercise):
        self.exercise, self.weights, self.outcomes = exercise, {}, {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        keep = []
        for item in items:
            mark = item.get_closest_marker("exercise")
            if mark is not None and mark.args and mark.args[0] == self.exercise:
                self.weights[item.nodeid] = mark.kwargs.get("weight", 1)
                keep.append(item)
        items[:] = keep

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, "passed")

    def share(self):
        """(weighted share, unweighted share) of the points, as the grader counts them."""
        counted = [k for k in self.weights if self.outcomes.get(k) != "skipped"]
        passed = [k for k in counted if self.outcomes.get(k) == "passed"]
        weighted = sum(self.weights[k] for k in passed) / sum(self.weights[k] for k in counted)
        return weighted, len(passed) / len(counted)


def run_exercise(pytester, exercise, test_file):
    outcomes = Outcomes(exercise)
    pytester.inline_run(str(EXERCISES / test_file), "-p", "no:cacheprovider", "-q", plugins=[outcomes])
    assert outcomes.weights and set(outcomes.outcomes) == set(outcomes.weights), "the exercise's tests did not run"
    return outcomes


WRONG_ANSWERS = [  # exercise, its test file, what to replace, the wrong answer
    ("conv.im2col", "test_a2_conv.py", (ref, "im2col"), im2col_wrong_tap_order),
    ("conv.im2col", "test_a2_conv.py", (ref, "im2col"), helpers.im2col_loop),
    ("conv.col2im", "test_a2_conv.py", (ref, "col2im"), helpers.col2im_loop),
    ("conv.forward", "test_a2_conv.py", (ref, "conv2d_forward"), conv2d_forward_by_the_loop),
    ("residual.add_backward", "test_a4_residual.py", (ref, "residual_add_backward"),
     residual_add_backward_without_the_one),
    ("residual.pad_forward", "test_a4_residual.py", (PadChannelsFunction, "forward"), pad_forward_by_the_loop),
    ("autograd.accumulate", "test_a1_autograd.py", (autograd, "_accumulate"), a1.oracle_accumulate),
    ("autograd.unbroadcast", "test_a1_autograd.py", (a1.ops, "unbroadcast"), helpers.unbroadcast_loop),
]
WRONG_IDS = ["im2col-tap-order", "im2col-loop", "col2im-loop", "forward-loop", "add-backward-without-the-1",
             "pad-forward-loop", "oracle-accumulate", "unbroadcast-loop"]


@pytest.mark.parametrize("exercise, test_file, target, answer", WRONG_ANSWERS, ids=WRONG_IDS)
def test_a_wrong_answer_earns_about_a_third_at_most(pytester, monkeypatch, exercise, test_file, target, answer):
    monkeypatch.setattr(*target, answer)
    weighted, unweighted = run_exercise(pytester, exercise, test_file).share()
    assert weighted <= SHARE_LIMIT, (f"{answer.__name__} as {exercise} earns {weighted:.0%} of its points "
                                     f"(it passes {unweighted:.0%} of the tests)")
    assert weighted < unweighted or unweighted == 0  # the weights are what keeps it low


def test_the_reference_earns_all_the_points(pytester):
    assert run_exercise(pytester, "conv.im2col", "test_a2_conv.py").share() == (1.0, 1.0)
