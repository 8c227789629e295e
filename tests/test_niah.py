"""Needle in a haystack: where the needle lands, which extracted frame shows it."""

import math

import pytest

from visctx.niah import haystack_indices, needle_frame


@pytest.mark.parametrize("n_haystack", [0, 1, 3, 7, 31])
@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_needle_lands_at_its_depth_among_other_frames(n_haystack, depth):
    idx = haystack_indices(32, needle=9, n_haystack=n_haystack, depth=depth)
    assert len(idx) == n_haystack + 1 and idx.count(9) == 1
    hay = [i for i in idx if i != 9]
    assert hay == sorted(hay) and len(set(hay)) == len(hay)  # uniform, in order, no repeats
    assert idx.index(9) == math.floor(depth / 100 * n_haystack + 0.5)


def test_half_depth_with_one_haystack_frame_is_not_the_start():
    """Python's round(0.5) == 0 put the 50 % needle first for N = 1, the same as 0 %."""
    assert haystack_indices(4, needle=2, n_haystack=1, depth=0).index(2) == 0
    assert haystack_indices(4, needle=2, n_haystack=1, depth=50).index(2) == 1
    assert haystack_indices(4, needle=2, n_haystack=2, depth=25).index(2) == 1


def test_depth_ends_and_whole_video():
    assert haystack_indices(8, needle=3, n_haystack=7, depth=0) == [3, 0, 1, 2, 4, 5, 6, 7]
    assert haystack_indices(8, needle=3, n_haystack=7, depth=100) == [0, 1, 2, 4, 5, 6, 7, 3]
    with pytest.raises(ValueError, match="out of range"):
        haystack_indices(8, needle=8, n_haystack=3, depth=50)


def test_needle_frame_follows_extraction():
    spec = {"fps": 2, "seconds": 32, "needle": {"shows": [[9, 1]]}}
    assert needle_frame(spec, extract_fps=1.0, max_frames=32) == 9  # 1 fps: frame i is second i
    # 8 of the 32 one-second frames kept (centres of 8 segments: seconds 2, 6, 10, ...): second 9 is skipped
    assert needle_frame(spec, extract_fps=1.0, max_frames=8) is None
    assert needle_frame(dict(spec, needle={"shows": [[10, 1]]}), extract_fps=1.0, max_frames=8) == 2
    assert needle_frame(dict(spec, needle={"shows": [[5, 3]]}), extract_fps=1.0, max_frames=8) == 1  # 5-7 s: frame 6


def test_only_needles_the_arm_can_read_on_their_frame_are_asked():
    import numpy as np

    from visctx import synth
    from visctx.config import Arm
    from visctx.niah import needle_readable

    spec = synth.scene_spec("v", np.random.default_rng(0))
    big, small = (dict(spec, needle=dict(spec["needle"], cell=[0, 0], side=s)) for s in (12, 1))
    assert needle_readable(big, Arm(8, 4), 0.25) and not needle_readable(small, Arm(8, 4), 0.25)
    assert needle_readable(dict(small, needle=dict(small["needle"], cell=[4, 4])), Arm(8, 196), 0.25)
