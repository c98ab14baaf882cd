import pytest
from pydantic import ValidationError

import plugsurgeon as ps
from plugsurgeon.sites.select import Where, select
from tests.nets import TinyResNet


@pytest.fixture(scope="module")
def sites():
    return ps.find_sites(TinyResNet(), "residual.branch", input_shape=(1, 3, 64, 64))


def paths(found):
    return [s.path for s in found]


def test_globs(sites):
    assert paths(select(sites, Where(include=["layer2.*"]))) == ["layer2.0.bn2", "layer2.1.bn2"]
    assert paths(select(sites, Where(exclude=["layer1.*"]))) == ["layer2.0.bn2", "layer2.1.bn2"]


def test_stages_channels_every_first_last(sites):
    assert paths(select(sites, Where(stages=[3]))) == ["layer2.0.bn2", "layer2.1.bn2"]
    assert paths(select(sites, Where(min_channels=32))) == ["layer2.0.bn2", "layer2.1.bn2"]
    assert paths(select(sites, Where(max_channels=16))) == ["layer1.0.bn2", "layer1.1.bn2"]
    assert paths(select(sites, Where(every=2))) == ["layer1.0.bn2", "layer2.0.bn2"]
    assert paths(select(sites, Where(every=2, offset=1))) == ["layer1.1.bn2", "layer2.1.bn2"]
    assert paths(select(sites, Where(first=1))) == ["layer1.0.bn2"]
    assert paths(select(sites, Where(last=2, first=1))) == ["layer2.0.bn2"]
    assert paths(select(sites, Where(per_stage_last=1))) == ["layer1.1.bn2", "layer2.1.bn2"]


def test_unknown_selector_is_rejected():
    with pytest.raises(ValidationError):
        Where(stage=[2])
    with pytest.raises(ValidationError):
        Where(every=0)


def test_convs_inside_residual_branches():
    convs = ps.find_sites(TinyResNet(), "conv", input_shape=(1, 3, 64, 64))
    inside = select(convs, Where(in_residual=True))
    assert paths(inside) == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
                             "layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]
    assert paths(select(convs, Where(in_residual=False))) == ["stem.0", "layer2.0.shortcut.0"]
