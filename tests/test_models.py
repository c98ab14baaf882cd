import pytest

import plugsurgeon as ps
from tests.nets import TinyResNet


def test_model_specs():
    assert type(ps.load_model("resnet18")).__name__ == "ResNet"
    assert type(ps.load_model("torchvision:resnet18")).__name__ == "ResNet"
    assert isinstance(ps.load_model("tests.nets:TinyResNet"), TinyResNet)
    detector = ps.load_model("fasterrcnn_mobilenet_v3_large_fpn")
    assert type(detector).__name__ == "FasterRCNN"


def test_timm_models():
    pytest.importorskip("timm")
    model = ps.load_model("timm:resnet18")
    assert len(ps.find_sites(model, "residual.branch", input_shape=(1, 3, 64, 64))) == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet5O", "unknown model 'resnet5O'; did you mean 'resnet50'"),
        ("nosuchpackage.module:factory", "cannot import 'nosuchpackage.module'"),
        ("tests.nets:missing", "has no callable 'missing'"),
        ("tests.nets:randomize_batchnorm", "failed"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(ps.PlugsurgeonError, match=message):
        ps.load_model(spec)
