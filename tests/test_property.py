"""Properties that hold on any CNN: surgery raises nothing but PlugsurgeonError, leaves the caller's
model as it was, keeps identity-at-init plugins exact, and deploys exactly.

A few dozen random networks run here; `python benchmarks/property_sweep.py --cases 2000` runs thousands.
"""

import pytest
import torch

import plugsurgeon as ps
from tests.random_nets import random_net, randomized

RECIPE_STEPS = [
    {"plugin": "se", "at": "residual.branch"},
    {"plugin": "cbam", "at": "stage"},
    {"plugin": "acnet", "at": "conv", "where": {"kernel": 3}},
    {"plugin": "repvgg", "at": "conv", "where": {"kernel": 3, "stride": 1}},
    {"plugin": "gc", "at": "residual.output"},
    {"plugin": "blurpool", "at": "downsample"},
    {"plugin": "coordconv", "at": "conv"},
]
SHAPE = (1, 3, 32, 32)


def check_case(seed: int) -> str:
    """One random net, one random step: 'applied', 'refused' or 'empty'; any broken property raises AssertionError."""
    import random

    rng = random.Random(seed)
    model = randomized(random_net(seed), seed).eval()
    step = dict(rng.choice(RECIPE_STEPS), allow_empty=True, on_unfit="skip")
    recipe = ps.Recipe(name=f"case{seed}", steps=[ps.Step(**step)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
    try:
        result = ps.apply(model, recipe, input_shape=SHAPE)
    except ps.PlugsurgeonError:
        outcome = "refused"
    else:
        outcome = "applied" if result.report.edits else "empty"
        spec = ps.catalog()[step["plugin"]]
        edited = result.model.eval()
        with torch.no_grad():
            got = edited(x)
        assert got.shape == expected.shape, f"seed {seed}: output shape changed"
        if spec.identity_at_init:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=lambda m: f"seed {seed} {step}: not identity at init: {m}")
        deployed = ps.deploy(edited, input_shape=SHAPE).model  # verifies exactness itself, or raises
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), got, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: deploy not exact: {m}")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items()), f"seed {seed}: caller's weights changed"
    assert [m.training for m in model.modules()] == flags, f"seed {seed}: caller's train/eval flags changed"
    return outcome


@pytest.mark.parametrize("seed", range(16))
def test_random_cnn(seed):
    assert check_case(seed) in ("applied", "refused", "empty")


def test_random_cnns_mostly_take_the_step():
    # Guard against a generator (or an engine) that makes every case vacuous.
    outcomes = [check_case(seed) for seed in range(100, 108)]
    assert outcomes.count("applied") >= 4, outcomes
