"""Deploy: the fastest inference model that computes what the trained one does.

reparameterize.py  our protocol (a catalog block's ``reparameterize()`` returns its single equivalent module),
                   and third-party deploy methods called by their own conventions (timm, Ultralytics)
fold.py            conv/linear -> BatchNorm (and BatchNorm + act) folding decided on the traced graph
verify.py          deployed against original on random input, whole model or part by part
measure.py         parameters and FLOPs
deploy.py          deploy() and DeployResult: reparameterize, re-trace, fold, verify
report.py          what happened, as plain dataclasses

The public names are ``plugsurgeon.deploy`` and ``plugsurgeon.DeployResult``; import
from the submodules (``from plugsurgeon.deployment.fold import plan_folds``), not this package.
"""
