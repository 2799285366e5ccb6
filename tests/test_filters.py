"""Each basic filter's rule at and around its boundary (pure functions, no Beam)."""
import pytest
from curate.filters import basic


@pytest.mark.parametrize("w,h,dropped", [(200, 200, False), (199, 400, True), (400, 199, True),
                                         (200, 5000, False), (0, 0, True)])
def test_image_too_small_at_200(w, h, dropped):
    assert (basic.image_too_small(w, h) == basic.IMAGE_TOO_SMALL) is dropped


def test_image_too_small_threshold_is_configurable():
    assert basic.image_too_small(100, 100, min_side=100) is None
    assert basic.image_too_small(99, 100, min_side=100) == basic.IMAGE_TOO_SMALL


@pytest.mark.parametrize("w,h,dropped", [(600, 200, False), (601, 200, True), (200, 600, False),
                                         (200, 601, True), (300, 300, False)])
def test_aspect_ratio_at_3(w, h, dropped):
    assert (basic.extreme_aspect_ratio(w, h) == basic.EXTREME_ASPECT_RATIO) is dropped


def test_aspect_ratio_configurable():
    assert basic.extreme_aspect_ratio(500, 100, max_ratio=5) is None
    assert basic.extreme_aspect_ratio(501, 100, max_ratio=5) == basic.EXTREME_ASPECT_RATIO


@pytest.mark.parametrize("caption,dropped", [
    ("a red cat", False),        # 3 words, 9 chars: kept (more than 2 words, more than 5 chars)
    ("red cat", True),           # 2 words
    ("a b c", True),             # 3 words but 5 chars
    ("a b cd", False),           # 3 words, 6 chars
    ("   a red cat   ", False),  # surrounding space does not count
    ("", True), ("   ", True), ("\n\t", True),
])
def test_caption_length_datacomp_defaults(caption, dropped):
    assert (basic.caption_too_short(caption) == basic.CAPTION_TOO_SHORT) is dropped


def test_caption_length_configurable():
    assert basic.caption_too_short("one", min_words=1, min_chars=3) is None
    assert basic.caption_too_short("on", min_words=1, min_chars=3) == basic.CAPTION_TOO_SHORT


@pytest.mark.parametrize("caption", ["IMG_1234.jpg", "DSC01234.JPG", "dsc_0042", "photo 2.png",
                                     "Click here", "click here to enlarge!", "Untitled", "stock photo",
                                     "No description available.", "view larger image", "12345.png"])
def test_boilerplate_captions_dropped(caption):
    assert basic.boilerplate_caption(caption) == basic.BOILERPLATE_CAPTION


@pytest.mark.parametrize("caption", ["a photo of a red circle", "click here for a blue square on the left",
                                     "two small red circles on the left", "Kreis (rot, klein) links",
                                     "image of a dog on a beach"])
def test_real_captions_not_boilerplate(caption):
    assert basic.boilerplate_caption(caption) is None


@pytest.mark.parametrize("score,dropped", [(0.28, False), (0.2799, True), (0.9, False), (-0.1, True)])
def test_clip_threshold_at_boundary(score, dropped):
    assert (basic.low_clip_score(score, 0.28) == basic.LOW_CLIP_SCORE) is dropped
