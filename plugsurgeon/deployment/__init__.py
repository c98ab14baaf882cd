"""Deploy: the fastest inference model that computes what the trained one does.

reparameterize.py  the one protocol: a module's ``reparameterize()`` returns its single equivalent module
fold.py            conv/linear -> BatchNorm folding decided on the traced graph (torch's fusion helpers)
verify.py          deployed against original on random input, whole model or part by part
measure.py         parameters and FLOPs
deploy.py          deploy() and DeployResult: reparameterize, re-trace, fold, verify
report.py          what happened, as plain dataclasses

The public names are ``plugsurgeon.deploy`` and ``plugsurgeon.DeployResult``; import
from the submodules (``from plugsurgeon.deployment.fold import plan_folds``), not this package.
"""
