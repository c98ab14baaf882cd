"""An edited Ultralytics model stays an instance of its own task class when surgery edits its top-level graph.

RT-DETR-l + seb inserts at the top level (its merges are in the model's own loop): the result must still be an
``RTDETRDetectionModel`` (Ultralytics' trainer, predictor and exporter dispatch on it) with its ``loss`` and
``predict``, not a bare ``fx.GraphModule`` printed under the class's name.
"""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.zoo.helpers import run, structure

pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import RTDETRDetectionModel  # noqa: E402

SHAPE = (1, 3, 256, 256)


@pytest.mark.slow
def test_rtdetr_with_seb_stays_an_rtdetr_model():
    model = RTDETRDetectionModel("rtdetr-l.yaml", verbose=False).eval()
    result = ps.apply(model, "seb", input_shape=SHAPE)
    assert any(edit.module.count(".") == 0 for edit in result.report.edits), "no edit of the top-level graph"
    edited = result.model
    assert isinstance(edited, RTDETRDetectionModel)
    assert not isinstance(edited, torch.fx.GraphModule)
    assert type(edited).loss is RTDETRDetectionModel.loss and type(edited).predict is RTDETRDetectionModel.predict
    x = torch.randn(SHAPE)
    assert structure(run(edited.eval(), x, train=False)) == structure(run(model, x, train=False))
    assert structure(edited.predict(x)) == structure(model.predict(x))
