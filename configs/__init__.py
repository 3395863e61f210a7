"""Run configs: each file's `get_config()` returns an ml_collections.ConfigDict.

  gkd-jax train --config=configs/demo.py --workdir=DIR [--config.<group>.<field>=VALUE ...]

`default.py` holds every field with its default; the others start from it or from each other as
modules of this package, e.g. `from configs import default` then `c = default.get_config()`.
The package is installed with gkd_jax (pyproject.toml lists it), so those imports work whatever
the working directory and however the file is loaded (ml_collections' `--config` flag, runpy,
importlib). Bundled data is found with `gkd_jax.tasks.asset_dir(name)`.
"""
