import pytest

from attention_backends.patterns import (
    AShapeParams,
    FlexPrefillParams,
    Pattern,
    VerticalSlashParams,
    default_params,
    parse_params,
)


def test_parse_params_picks_the_model_by_name():
    params = parse_params({"pattern": "vertical_slash", "n_vertical": 100, "n_slash": 200})
    assert isinstance(params, VerticalSlashParams)
    assert (params.n_vertical, params.n_slash, params.last_q) == (100, 200, 64)


def test_defaults_follow_the_papers():
    fp = default_params(Pattern.FLEXPREFILL)
    assert isinstance(fp, FlexPrefillParams)
    assert (fp.gamma, fp.tau, fp.block_size) == (0.9, 0.1, 64)
    assert default_params("vertical_slash").last_q == 64


@pytest.mark.parametrize(
    "data",
    [
        {"pattern": "block_sparse", "top_k": 0},
        {"pattern": "vertical_slash", "n_vertical": -1},
        {"pattern": "a_shape", "n_local": 0},
        {"pattern": "flexprefill", "gamma": 1.5},
        {"pattern": "flexprefill", "min_budget": 0},
        {"pattern": "a_shape", "block_size": 0},
        {"pattern": "a_shape", "unknown": 1},
        {"pattern": "nope"},
    ],
)
def test_bad_params_raise_value_error(data):
    with pytest.raises(ValueError):
        parse_params(data)


def test_params_are_immutable_and_serialisable():
    params = AShapeParams(n_init=4, n_local=32)
    assert parse_params(params.model_dump(mode="json")) == params
    with pytest.raises(ValueError):
        params.n_local = 8  # type: ignore[misc]
