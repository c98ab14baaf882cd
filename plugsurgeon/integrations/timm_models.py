"""The module timm files edited architectures under: ``timm.list_models(module="timm_models")`` lists them.

``timm.models.register_model`` reads an entry point's pretrained configs from ``default_cfgs`` in the
entry point's own module and appends the entry point's name to that module's ``__all__``, as it does
for timm's model files. Keeping both here, with each entry point set as an attribute beside them,
leaves ``plugsurgeon.integrations.timm``'s namespace as written and this one consistent.
"""

from __future__ import annotations

from typing import Any

default_cfgs: dict[str, Any] = {}  # registered name -> timm.models.DefaultCfg, copied from the base's
__all__: list[str] = []  # timm's register_model appends each registered name
