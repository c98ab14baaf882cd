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


@pytest.mark.parametrize(
    ("source", "kind"),
    [("resnet18", "torchvision"), ("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm"), ("tests.nets:TinyResNet", "factory")],
)
def test_parse_source(source, kind):
    from plugsurgeon.store.sources import parse_source

    assert parse_source(source)[0] == kind


@pytest.mark.parametrize("source", ["timm:hf-hub:org/model", "torchvision:../x", "../x:make", "pkg.mod:", ":make", "a b", "/abs/dir", ""])
def test_malformed_sources(source):
    from plugsurgeon.store.sources import parse_source

    with pytest.raises(ps.PlugsurgeonError):
        parse_source(source)


def test_import_paths_run_only_when_trusted():
    from plugsurgeon.store.sources import build_source

    with pytest.raises(ps.ModelLoadError, match="trust_source=True"):
        build_source("tests.nets:TinyResNet", trusted=False)
    assert isinstance(build_source("tests.nets:TinyResNet", trusted=True), TinyResNet)
    assert type(build_source("resnet18", trusted=False)).__name__ == "ResNet"  # builders are data


def test_a_trusted_factory_that_exits_is_a_load_error():
    with pytest.raises(ps.ModelLoadError, match=r"sys:exit\(\) failed: SystemExit"):
        ps.load_model("sys:exit")
