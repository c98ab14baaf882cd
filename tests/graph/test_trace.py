import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.graph.trace import LOCAL, OWNER, trace_module
from tests.nets import TinyFPN, TinyResNet, UntraceableNet


def test_nodes_are_numbered_per_module_call():
    traced = ps.trace(TinyResNet(), (1, 3, 32, 32))
    part = traced.parts[0]
    block_nodes = [n for n in part.gm.graph.nodes if n.meta.get(OWNER) == "layer1.0"]
    assert [n.meta[LOCAL] for n in block_nodes] == list(range(len(block_nodes)))
    # Tracing the block alone, shallowly, reproduces the same numbering.
    alone, _ = trace_module(TinyResNet().layer1[0], shallow=True)
    alone_nodes = [n for n in alone.graph.nodes if LOCAL in n.meta]
    assert [(n.op, n.target) for n in alone_nodes] == [(n.op, n.target.removeprefix("layer1.0.") if isinstance(n.target, str) else n.target) for n in block_nodes]


def test_shapes_come_from_fake_propagation():
    traced = ps.trace(TinyResNet(), (2, 3, 64, 64))
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in traced.parts[0].gm.graph.nodes if "tensor_meta" in n.meta}
    assert shapes["stem_0"] == (2, 16, 32, 32)
    assert shapes["layer2_1_relu_1"] == (2, 32, 8, 8)
    assert traced.flops and traced.flops > 0


def test_untraceable_model_is_traced_in_parts():
    traced = ps.trace(UntraceableNet(), (1, 3, 64, 64))
    assert [p.path for p in traced.parts] == ["backbone"]
    assert traced.untraced[0][0] == ""
    sites = ps.find_sites(traced, "residual.branch")
    assert [s.path for s in sites] == ["backbone.layer1.0.bn2", "backbone.layer1.1.bn2", "backbone.layer2.0.bn2", "backbone.layer2.1.bn2"]


def test_tracing_leaves_no_state_on_the_model():
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.cache = None

        def forward(self, x):
            self.cache = x.shape  # a proxy during tracing
            if x.sum() > 0:  # untraceable
                return self.conv(x)
            return self.conv(x) * 2

    model = Caching()
    with pytest.raises(ps.TraceError, match="nor any of its submodules"):
        ps.trace(model, (1, 3, 16, 16))
    assert model.cache is None


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, -3), ("a", 3, 8, 8)])
def test_bad_input_shapes_are_user_errors(shape):
    with pytest.raises(ps.PlugsurgeonError):
        ps.trace(TinyResNet(), shape)


def test_model_that_does_not_run_on_the_shape():
    with pytest.raises(ps.TraceError, match="does not run on inputs of shape"):
        ps.trace(TinyResNet(), (1, 5, 64, 64))


def test_pyramid_outputs_keep_their_structure():
    traced = ps.trace(TinyFPN(), (1, 3, 64, 64))
    out = traced.parts[0].gm(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5"]


def test_foreign_patterns_trace_as_one_graph_around_an_opaque_head():
    from tests.nets import ForeignPatternsNet

    model = ForeignPatternsNet().eval()
    traced = ps.trace(model, (1, 3, 32, 32))
    # The whole model is one graph; only the head, whose own forward branches on a shape, is a leaf,
    # and its insides are traced as a part of their own.
    assert [p.path for p in traced.parts] == ["", "head.proj"]
    assert [path for path, _reason in traced.untraced] == ["head"]
    assert model.head.shape is None  # nothing the trace ran stayed on the model


def test_shared_module_instance_is_named_by_its_call_site():
    from tests.nets import ForeignPatternsNet

    traced = ps.trace(ForeignPatternsNet(), (1, 3, 32, 32))
    gm = traced.parts[0].gm
    act_calls = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith(".act")]
    assert act_calls == ["stem.act", "blocks.0.cv1.act", "blocks.0.cv2.act", "blocks.1.cv1.act", "blocks.1.cv2.act"]
    owners = {n.target: n.meta[OWNER] for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith(".act")}
    assert owners["blocks.1.cv2.act"] == "blocks.1.cv2"


def test_defaults_the_caller_left_out_are_part_of_the_call():
    from plugsurgeon.graph.trace import _concrete_args_of
    from tests.nets import SplitBottleneck

    block = SplitBottleneck(4)
    # Traced alone with shortcut=None bound, `if shortcut is None` takes the branch the model takes.
    assert _concrete_args_of(block.forward, (torch.zeros(1),), {}, is_input=lambda v: isinstance(v, torch.Tensor)) == {"shortcut": None}


def test_torch_layer_subclasses_from_other_packages_are_leaves():
    from plugsurgeon.graph.trace import is_leaf_type

    class BatchNormAct(nn.BatchNorm2d):  # timm's BatchNormAct2d: a BatchNorm with an activation child
        def __init__(self, n):
            super().__init__(n)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(super().forward(x)) if self.training or True else x

    BatchNormAct.__module__ = "somewhere.else"
    assert is_leaf_type(BatchNormAct(4))
    assert not is_leaf_type(nn.Sequential(nn.ReLU()))


def test_a_layer_with_stateless_decorations_is_one_leaf():
    from plugsurgeon.graph.trace import is_leaf_type

    class FrozenNormAct(nn.Module):  # timm's FrozenBatchNormAct2d: its own buffers, a drop and an act
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.ones(4))
            self.drop, self.act = nn.Identity(), nn.ReLU()

        def forward(self, x):
            return self.act(self.drop(x * self.weight[:, None, None]))

    class Block(nn.Module):  # children with weights: a block, traced through
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(4))
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(x) * self.gamma[:, None, None]

    assert is_leaf_type(FrozenNormAct())
    assert not is_leaf_type(Block())
