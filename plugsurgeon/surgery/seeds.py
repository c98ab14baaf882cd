"""A plan on sites that depend on the random seed: refused, because planning and applying must give the same edit.

A forward that draws random numbers in Python (``if self.training and torch.rand(1).item() < p: continue``
to drop a block) is traced along the branch its draw chose, so the sites a step chooses can change from
run to run, and a block the draw skipped gets no edit. When the trace drew from the generator
(``Traced.drew_random``) the model is traced once more from another seed and each step's sites chosen
again: a step whose sites differ is refused, a difference at sites no step uses is a note. A model that
draws nothing pays no second trace. The caller's random state is left as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.plugins.registry import get_plugin
from plugsurgeon.sites.find import locate
from plugsurgeon.sites.seeds import listed, seed_note
from plugsurgeon.sites.site import Site
from plugsurgeon.surgery.recipe import Recipe, Step

_OTHER_SEEDS = (1, 2)
# How planning chooses a step's sites (plan._sites_for: step, plugin, sites, index, recipe, model, trace),
# passed in by plan(), which imports this module.
Choose = Callable[..., list[Site]]
# The second trace of each trace that drew, by the first one's id while it lives: a sweep plans many
# recipes on one trace, and traces it again once.
_OTHER: dict[int, tuple[Traced, list[Site]]] = {}


def check_seed_stable(model: nn.Module, traced: Traced, recipe: Recipe, sites: list[Site], choose: Choose) -> list[str]:
    """Refuse a plan whose steps choose other sites when the model is traced from another seed.

    Args:
        model: The model planned on.
        traced: Its trace; nothing happens unless that trace drew random numbers.
        recipe: The recipe planned.
        sites: Every site of ``traced``.
        choose: Planning's choice of a step's sites (``plan._sites_for``).

    Returns:
        The report's note on sites that differ between the traces but that no step chooses (empty when
        they agree, or nothing was drawn).

    Raises:
        SiteError: A step's sites differ between the two traces; the message names them.
    """
    if not traced.drew_random:
        return []
    if id(traced) not in _OTHER:
        other = _traced_from_another_seed(model, traced.input_shape)
        _OTHER[id(traced)] = (other, locate(other))
        weakref.finalize(traced, _OTHER.pop, id(traced), None)
    other, other_sites = _OTHER[id(traced)]
    for index, step in enumerate(recipe.steps, start=1):
        first = _chosen(choose, step, index, recipe, model, traced, sites)
        second = _chosen(choose, step, index, recipe, model, other, other_sites)
        if first != second:
            raise SiteError(
                f"step {index} of recipe '{recipe.name}' ({step.plugin} at {step.at}): the sites it chooses depend on the "
                f"random seed: two traces of {type(model).__name__} from different seeds disagree on {listed(sorted(first ^ second))}. Its forward "
                "draws random numbers (a block skipped at random in train mode), so the edit would change from run to run",
                hint="plan on the model in eval mode (model.eval(), then .train() on the edited model), or exclude these "
                     "sites with where={'exclude': [...]}",
                cli_hint="the model draws random numbers in train mode; exclude these sites with `where: {exclude: [...]}`",
            )
    note = seed_note(sorted({f"{s.role} {s.path}" for s in sites} ^ {f"{s.role} {s.path}" for s in other_sites}))
    return [f"{note} (no step of this recipe chooses them: its plan is the same from any seed)"] if note else []


def _traced_from_another_seed(model: nn.Module, input_shape: tuple[int, ...]) -> Traced:
    """The model traced again from a seed whose state is not the caller's (which the first trace started
    from: ``trace`` puts the generator back as it found it)."""
    with torch.random.fork_rng(devices=[]):
        caller = torch.random.get_rng_state()
        for seed in _OTHER_SEEDS:
            torch.manual_seed(seed)
            if not torch.equal(caller, torch.random.get_rng_state()):
                break
        return trace(model, input_shape)


def _chosen(choose: Choose, step: Step, index: int, recipe: Recipe, model: nn.Module, traced: Traced,
            sites: list[Site]) -> set[str]:
    """The sites (``role path``) a step chooses in ``traced``, as planning chooses them."""
    try:
        chosen = choose(step, get_plugin(step.plugin), sites, index, recipe, model, traced)
    except SiteError:
        return set()  # no site of the role in this trace
    return {f"{s.role} {s.path}" for s in chosen}
