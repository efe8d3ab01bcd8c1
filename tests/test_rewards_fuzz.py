"""Property tests: the reward never raises on any text and stays inside `RewardSpec.bounds`.

Profiles: ~200 examples per test by default; ``HYPOTHESIS_PROFILE=slow`` runs 5,000
(``HYPOTHESIS_MAX_EXAMPLES=N`` runs N). They are applied per test (not loaded globally) so other
test files keep their own settings.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reczero.answers import TEMPLATES, check_format, parse_number, parse_rating
from reczero.rewards import RewardSpec, score
from reczero.scale import RatingScale

settings.register_profile(
    "reczero-rewards-default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(  # HYPOTHESIS_MAX_EXAMPLES sets its size (the README's reliability table: 10,000)
    "reczero-rewards-slow",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", 5000)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings.get_profile(
    "reczero-rewards-slow" if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else "reczero-rewards-default"
)

SCALES = [RatingScale(1.0, 5.0, 1.0), RatingScale(0.5, 5.0, 0.5), RatingScale(1.0, 10.0, 1.0)]
SPECS = [
    RewardSpec(),
    RewardSpec(divisor="scale"),
    RewardSpec(clip_rating_reward=True),
    RewardSpec(rating_reward="exact"),
    RewardSpec(divisor="scale", format_shaping=0.9),
    RewardSpec(template="think_answer", divisor="scale", format_shaping=0.5),
    RewardSpec(template="answer_only", divisor="scale"),
    RewardSpec(allow_trailing_text=True, divisor="scale", format_penalty=-2.0, format_shaping=1.5),
]

ALL_TAGS = sorted(
    {f"<{t}>" for tpl in TEMPLATES.values() for t in tpl.tags}
    | {f"</{t}>" for tpl in TEMPLATES.values() for t in tpl.tags}
)
NEAR_TAGS = [
    "<rate",
    "rate>",
    "</rate",
    "<Rate>",
    "< rate>",
    "<analyze  user>",
    "<>",
    "</>",
    "<<rate>>",
    "<|im_end|>",
    "</s>",
]
NUMBERS = st.one_of(
    st.sampled_from(
        ["4", "4.5", "+4", "-0", "0", ".5", "5.", "1e308", "-1e308", "nan", "inf", "4/5", "four", "3 stars"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-20, max_value=20).map(lambda x: f"{x:.3f}"),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers(min_value=1, max_value=10_000).map(lambda n: "9" * n),
    st.integers(min_value=1, max_value=10_000).map(lambda n: "0." + "1" * n),
)
PIECES = st.one_of(
    st.sampled_from(ALL_TAGS),
    st.sampled_from(NEAR_TAGS),
    NUMBERS,
    st.text(max_size=30),
    st.sampled_from([" ", "\n", "\t", "\u3000", "\u200b", "\x00", "\ud7ff", "é", "🙂"]),
)
TAG_SOUP = st.lists(PIECES, max_size=40).map("".join)


def _scale_and_target():
    return st.sampled_from(SCALES).flatmap(
        lambda scale: st.tuples(
            st.just(scale),
            st.one_of(st.sampled_from(scale.values()), st.floats(min_value=scale.low, max_value=scale.high)),
        )
    )


def _valid_specs(scale: RatingScale) -> list[RewardSpec]:
    out = []
    for spec in SPECS:
        try:
            spec.validate_for(scale)
        except ValueError:
            continue
        out.append(spec)
    return out


def _check_invariants(text: str, scale: RatingScale, target: float) -> None:
    for spec in _valid_specs(scale):
        result = score(text, target, scale, spec)
        low, high = spec.bounds(scale)
        assert low - 1e-9 <= result.total <= high + 1e-9, (spec, result)
        assert math.isfinite(result.total)
        assert result.total == result.format + result.rating
        if result.format_ok:
            assert result.reason == "ok"
            assert result.parsed is not None and scale.contains(result.parsed)
            assert result.total >= spec.passing_range(scale)[0] - 1e-9
        else:
            assert result.reason != "ok"
            assert result.rating == 0.0
            assert result.total < spec.passing_range(scale)[0]


@FUZZ
@given(text=st.text(max_size=2000), scale_target=_scale_and_target())
def test_arbitrary_text(text, scale_target):
    _check_invariants(text, *scale_target)


@FUZZ
@given(text=TAG_SOUP, scale_target=_scale_and_target())
def test_tag_soup(text, scale_target):
    _check_invariants(text, *scale_target)


@FUZZ
@given(
    blocks=st.lists(st.text(max_size=20), min_size=3, max_size=3),
    rate=NUMBERS,
    tail=st.sampled_from(["", "\n", "<|im_end|>", " more", "<rate>3</rate>"]),
    scale_target=_scale_and_target(),
)
def test_near_valid_four_step(blocks, rate, tail, scale_target):
    user, item, match = blocks
    text = (
        f"<analyze user>{user}</analyze user><analyze item>{item}</analyze item>"
        f"<match>{match}</match><rate>{rate}</rate>{tail}"
    )
    _check_invariants(text, *scale_target)


@FUZZ
@given(scale_target=_scale_and_target(), data=st.data())
def test_well_formed_round_trip(scale_target, data):
    """A correct completion with any in-scale number passes and is rewarded by its error."""
    scale, target = scale_target
    value = data.draw(st.floats(min_value=scale.low, max_value=scale.high))
    rendered = repr(value) if "e" not in repr(value) else f"{value:.6f}"
    text = f"<analyze user>a</analyze user><analyze item>b</analyze item><match>c</match><rate>{rendered}</rate>"
    spec = RewardSpec(divisor="scale")
    result = score(text, target, scale, spec)
    assert result.format_ok, (rendered, result)
    assert result.parsed == float(rendered)
    assert result.total == pytest.approx(1.0 + (1.0 - abs(float(rendered) - target) / scale.span), abs=1e-12)


@FUZZ
@given(text=st.one_of(TAG_SOUP, st.text()), tag=st.sampled_from(["rate", "answer", "x"]))
def test_parse_never_raises(text, tag):
    value = parse_rating(text, tag)
    assert value is None or math.isfinite(value)
    for template in TEMPLATES:
        check = check_format(text, SCALES[0], template)
        assert 0 <= check.tags_found <= check.tags_total
        assert not check.ok or (check.rating is not None and SCALES[0].contains(check.rating))


@FUZZ
@given(content=st.one_of(NUMBERS, st.text(max_size=50)))
def test_parse_number_agrees_with_float(content):
    value = parse_number(content)
    if value is not None:
        assert math.isfinite(value)
        stripped = content.strip().lower().removesuffix("stars").removesuffix("star").strip()
        assert value == float(stripped)
