"""How far torchvision's ResNets edited by `antialias` are from antialiased-cnns (the paper's release), same weights.

    python benchmarks/antialias_release.py --size 224 resnet18 resnet50             # the README's release recipe
    python benchmarks/antialias_release.py --recipe antialias --size 224 resnet18    # the default recipe (max_window 0)

Random weights and BN statistics (tests/plugins/_reference_pairs.scramble) in the release's model, mapped into
the edited torchvision model with from_antialiased_cnns; prints max|ours - release| / max|release| on the logits
(eval mode, 4 random images) and the same for each strided block fed one random input. Needs antialiased-cnns.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import antialiased_cnns
    import torchvision

    import plugsurgeon as ps
    from plugsurgeon.plugins.blurpool import from_antialiased_cnns
    from tests.plugins._reference_pairs import scramble

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--recipe", default=None, help="a recipe name or file (default: README's antialias_release)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    recipe = args.recipe or ps.parse_recipe(re.findall(r"```yaml\n(name: antialias_release\n.*?)```", (ROOT / "README.md").read_text(), re.S)[0])
    for name in args.models:
        torch.manual_seed(0)
        reference = scramble(getattr(antialiased_cnns, name)(pretrained=False)).eval()
        ours = ps.apply(getattr(torchvision.models, name)(weights=None), recipe, input_shape=(1, 3, args.size, args.size)).model.eval()
        ours.load_state_dict(from_antialiased_cnns(reference.state_dict()), strict=True)
        x = torch.randn(4, 3, args.size, args.size)
        with torch.no_grad():
            a, b = ours(x), reference(x)
            print(f"{name} at {args.size} px: logits {float((a - b).abs().max() / b.abs().max()):.3g}")
            side, width = args.size // 4, ours.layer1[-1].conv1.in_channels  # what layer2 reads
            for i in (2, 3, 4):
                block_in = torch.randn(2, width, side, side)
                p, q = ours.get_submodule(f"layer{i}.0")(block_in), reference.get_submodule(f"layer{i}")[0](block_in)
                print(f"  layer{i}.0 alone: {float((p - q).abs().max() / q.abs().max()):.3g}")
                side, width = side // 2, q.shape[1]


if __name__ == "__main__":
    main()
