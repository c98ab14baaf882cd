import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


# The default suite keeps to a CPU budget (about 500 s on 2 cores): of the zoo-wide parametrisations, a
# representative per code path runs by default and the rest under the `slow` marker, which CI runs as a
# second step (`pytest -m slow`).
DEFAULT_CASES = {
    "test_cbam_and_se_apply_or_say_why_not": {"resnet18", "convnext_tiny", "squeezenet1_1"},
    "test_se_applies_to_every_residual_block_or_is_refused_rightly": {
        "ecaresnet26t", "cs3darknet_s", "convnext_atto_rms", "dla46x_c", "repvgg_a0", "ese_vovnet19b_dw"},
    "test_attention_on_every_bottleneck_with_a_shortcut": {"yolov8n.yaml-cbam", "yolo11n.yaml-se"},
    "test_pyramid_pooling_lands_on_the_extractors_last_map": {"yolov8n.yaml-sppf", "yolov8n-cls.yaml-aspp"},
    "test_cbam_on_every_encoder_block": {"FPN"},
    "test_aspp_at_the_encoders_end": {"DeepLabV3Plus"},
    "test_detector_takes_the_recipe": {"retinanet_resnet50_fpn-seb"},
    "test_segmentation_model_takes_the_recipe": set(),
    # Every built-in recipe on the paper's model family is a sweep; by default one recipe per code path:
    # insert after a site, replace a conv (weights kept / keys renamed), de-stride, pools, a backbone
    # module, multi-input neck plugins on a detector, a torchvision op.
    "test_recipe_applies_and_trains": {"cbam", "se", "acnet", "antialias", "maxblurpool", "asff", "seb", "blaze", "dcnv2",
                                       "aspp", "ghost"},
    "test_acnet_resnet_deploys_to_the_plain_fused_network": {"resnet18"},
    "test_torchvision_models_fold_every_bn_and_match_the_unfused_eval_model": {"efficientnet_b0"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        keep = DEFAULT_CASES.get(getattr(item, "originalname", item.name))
        callspec = getattr(item, "callspec", None)
        if keep is not None and callspec is not None and callspec.id not in keep:
            item.add_marker(pytest.mark.slow)
