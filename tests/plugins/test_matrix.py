"""The registry drives this matrix: every plugin x every site role it declares, on tiny host networks.

For each pair: the edited model keeps its output shapes, gradients reach the plugin, dtype follows
the host, the edited model still traces with fx, and a plugin that declares identity at init leaves
the output unchanged (BatchNorm statistics randomised first, so an identity BN hides nothing).
A pair the host cannot take fails the test unless EXPECTED_UNFIT lists it, and a listed pair that fits fails too.
Every plugin declares its arguments in a typed, bounded model whose defaults are the constructor's,
and refuses ill-typed and out-of-range values for each of them.
"""

from __future__ import annotations

import copy
import inspect
import json
import math

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.sites.site import ROLES, role_matches
from tests.nets import TinyFPN, TinyResNet, randomize_batchnorm

INPUT = (2, 3, 64, 64)

# The (plugin, role) pairs the tiny hosts are expected to refuse, each with a phrase of the refusal and, in a comment,
# why the refusal is right. Any other refusal (a SiteError) fails the matrix, and a listed pair that is no longer
# refused fails too, so the list cannot go stale. Measured by running the matrix (issue 16): every plugin fits every
# role it declares on TinyResNet / TinyFPN with its suggested `where`, so the list is empty.
EXPECTED_UNFIT: dict[tuple[str, str], str] = {}


def _host_for(role: str) -> nn.Module:
    return TinyFPN() if role.startswith(("neck", "upsample")) else TinyResNet()


def _cases():
    for name, spec in ps.catalog().items():
        roles = sorted({r for r in ROLES if any(role_matches(r, declared) for declared in spec.roles)})
        for role in roles:
            yield pytest.param(name, role, id=f"{name}@{role}")


def _outputs(model, x):
    out = model(x)
    return list(out.values()) if isinstance(out, dict) else [out]


def _edit(name: str, role: str, host: nn.Module):
    where = dict(ps.get_plugin(name).suggested_where)
    recipe = ps.Recipe(name="matrix", steps=[ps.Step(plugin=name, at=role, where=where)])
    if (name, role) not in EXPECTED_UNFIT:
        return ps.apply(host, recipe, input_shape=INPUT)  # a SiteError here fails the test
    with pytest.raises(ps.SiteError) as refused:
        ps.apply(host, recipe, input_shape=INPUT)
    assert EXPECTED_UNFIT[name, role] in refused.value.message, refused.value.message
    pytest.xfail(f"{name}@{role} is refused, as EXPECTED_UNFIT says: {refused.value.message}")


def test_every_expected_unfit_pair_is_a_case_of_the_matrix():
    cases = {tuple(case.values) for case in _cases()}
    assert set(EXPECTED_UNFIT) <= cases, f"not a (plugin, declared role) pair: {set(EXPECTED_UNFIT) - cases}"


@pytest.mark.parametrize(("name", "role"), list(_cases()))
def test_plugin_at_role(name: str, role: str):
    spec = ps.get_plugin(name)
    host = randomize_batchnorm(_host_for(role)).eval()
    x = torch.randn(INPUT)
    reference = [t.detach() for t in _outputs(host, x)]

    result = _edit(name, role, host)
    edited = result.model.eval()
    assert result.report.edits, "the plan made no edit"
    outputs = _outputs(edited, x)
    assert [tuple(t.shape) for t in outputs] == [tuple(t.shape) for t in reference]

    if spec.identity_at_init:
        for got, want in zip(outputs, reference, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{name} declares identity at init")

    # Gradients reach every new module: each parameter gets a gradient, and some of it is non-zero.
    edited.train()
    sum(t.float().pow(2).mean() for t in _outputs(edited, x)).backward()
    new_modules = [edited.get_submodule(e.module) for e in result.report.edits]
    params = [p for m in new_modules for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in params), "a plugin parameter got no gradient"
    if params:
        assert any(p.grad.abs().sum() > 0 for p in params), "every plugin gradient is zero"

    # The edited model is still an fx-traceable model with the same sites of other roles.
    ps.trace(edited.eval(), INPUT)


@pytest.mark.parametrize(("name", "role"), list(_cases()))
def test_plugin_follows_host_dtype(name: str, role: str):
    host = _host_for(role).double().eval()
    result = _edit(name, role, host)
    for edit in result.report.edits:
        module = result.model.get_submodule(edit.module)
        assert all(t.dtype == torch.float64 for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())
    out = _outputs(result.model.eval(), torch.randn(INPUT, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in out)


@pytest.mark.parametrize("name", sorted(ps.catalog()))
def test_plugin_declares_its_paper_and_roles(name: str):
    spec = ps.get_plugin(name)
    assert spec.paper and str(spec.year) in spec.paper or "arXiv" in spec.paper
    assert spec.roles and spec.mode in ("after", "replace")
    module_doc = __import__(spec.factory.__module__, fromlist=["_"]).__doc__
    assert module_doc and ("arxiv.org" in module_doc or "arXiv" in module_doc), "each plugin file opens with its paper"


def _settable(spec) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(spec.factory).parameters.items()
            if n not in spec.structural and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@pytest.mark.parametrize("name", sorted(ps.catalog()))
def test_plugin_declares_typed_bounded_args(name: str):
    spec = ps.get_plugin(name)
    settable = _settable(spec)
    assert set(spec.args.model_fields) == set(settable), "the args model names exactly the constructor's settable arguments"
    if settable:
        assert spec.args is not ps.PluginArgs, f"{name} declares its own args model"
    defaults = spec.args()  # the defaults validate against their own bounds
    for arg, param in settable.items():
        got = defaults.kwargs()[arg]
        assert got == param.default or tuple(got) == tuple(param.default), f"{arg}: model and constructor defaults agree"
    # A manifest records them as JSON and validates them again with the same model.
    assert spec.args.model_validate(json.loads(defaults.model_dump_json())) == defaults
    schema = spec.args.model_json_schema()["properties"]
    for arg, described in spec.to_dict()["args"].items():
        assert described["description"], f"{name}.{arg} has a description"
        for prop in [p for p in schema[arg].get("anyOf", [schema[arg]]) if p.get("type") != "null"]:
            if prop.get("type") == "array":
                assert "maxItems" in prop, f"{name}.{arg}: lists are bounded"
                prop = prop["items"]
            if prop.get("type") in ("integer", "number"):
                assert "maximum" in prop or "exclusiveMaximum" in prop, f"{name}.{arg}: numbers have an upper bound"


def _hostile(prop: dict) -> list:
    """Values of the wrong type or out of range for a JSON schema property."""
    kind = prop.get("type")
    if kind == "boolean":
        return ["false", "true", 0, 1, None]
    if kind == "integer":
        return [True, 1.5, "3", math.nan, prop["maximum"] + 1, prop.get("minimum", 0) - 1]
    if kind == "number":
        return [math.nan, math.inf, -math.inf, True, "0.1", prop.get("maximum", math.inf) * 2 + 1]
    if kind == "string":
        return [b"add", 1, "no-such-value" if "enum" in prop else None]
    if kind == "array":
        return ["3", {"a": 1}, [prop["items"]["maximum"] + 1], [1] * (prop["maxItems"] + 1), [True]]
    return []


@pytest.mark.parametrize("name", sorted(ps.catalog()))
def test_plugin_args_refuse_ill_typed_and_out_of_range_values(name: str):
    spec = ps.get_plugin(name)
    schema = spec.args.model_json_schema()["properties"]
    for arg, prop in schema.items():
        for option in [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]:
            for value in _hostile(option):
                if value is None:
                    continue
                with pytest.raises(ps.RecipeError) as refused:
                    spec.validate_args({arg: value})
                assert f"plugin '{name}': argument '{arg}'" in refused.value.message, (arg, value)


def test_edit_does_not_touch_the_input_model():
    host = randomize_batchnorm(TinyResNet()).eval()
    before = copy.deepcopy(host.state_dict())
    ps.apply(host, ps.Recipe(name="t", steps=[ps.Step(plugin="cbam", at="residual.branch")]), input_shape=INPUT)
    after = host.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
