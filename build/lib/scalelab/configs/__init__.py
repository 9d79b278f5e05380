"""Hydra's YAML config groups, shipped inside the package (found through the package, not the
source tree, so wheels and editable installs alike find them). `--config-dir` adds more.

Importing this package registers the typed schema (`train_schema`) and the `run_name` resolver
that `train.yaml` uses, so whoever composes from CONFIG_DIR gets the checked config.
"""

from pathlib import Path

from scalelab.config import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent)
register_configs()
