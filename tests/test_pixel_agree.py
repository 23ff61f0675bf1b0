"""--metric pixel-agree: per-position argmax over the channel axis, percent equal to the original
model's (dense outputs: segmentation maps, sequences)."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.compress import metric_for
from toolchain.errors import ConfigError


def test_pixel_agree_counts_positions_whose_channel_argmax_is_unchanged():
    ref = np.zeros((2, 3, 2, 2), np.float32)
    ref[:, 1] = 1.0  # class 1 everywhere
    out = ref.copy()
    out[0, 2, 0, 0] = 5.0  # one of 8 positions now class 2
    out[1, 0, 1, 1] = 9.0  # and another
    m = metric_for("pixel-agree", None, out)
    assert m.higher_is_better and not m.needs_labels
    assert m.score(out, None, ref) == pytest.approx(75.0)
    assert m.score(ref, None, ref) == 100.0


def test_pixel_agree_on_class_logits_is_agree():
    rng = np.random.default_rng(0)
    ref, out = rng.standard_normal((2, 50, 4))
    assert metric_for("pixel-agree", None, out).score(out, None, ref) == \
        metric_for("agree", None, out).score(out, None, ref)


@pytest.mark.parametrize("shape", [(6,), (6, 1, 4, 4)])
def test_pixel_agree_needs_two_classes_on_axis_1(shape):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ConfigError, match="pixel-agree needs"):
        metric_for("pixel-agree", None, x).score(x, None, x)


def test_a_changed_output_shape_is_refused():
    with pytest.raises(ConfigError, match="changed shape"):
        metric_for("pixel-agree", None, np.zeros((2, 3, 4))).score(
            np.zeros((2, 3, 4)), None, np.zeros((2, 3, 5)))
