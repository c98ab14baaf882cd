"""The notebooks section: every ``notebooks/*.ipynb`` of the repository, rendered as stored.

The notebooks live at the top of the repository (outside ``docs/``), stored executed; this hook adds each
one to the site's files under ``notebooks/`` and lists them, in file-name order, as the nav's "Notebooks"
section (empty in mkdocs.yml), so a new notebook shows up without editing the configuration. The
mkdocs-jupyter plugin then renders them without executing anything (``execute: false``).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SECTION = "Notebooks"


def _notebooks() -> list[Path]:
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not found:
        raise PluginError(f"docs/hooks/notebooks.py: no notebook in {NOTEBOOKS}")
    return found


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    for item in config.nav or []:
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = [f"notebooks/{path.name}" for path in _notebooks()]
            return config
    raise PluginError(f"docs/hooks/notebooks.py: mkdocs.yml's nav has no '{SECTION}' section to fill")


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps the .ipynb files it is given
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in _notebooks():
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files
