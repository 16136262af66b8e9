"""Re-export of the config root and the ``--set`` parser, which live in ``lm/config.py``.

Kept so ``from experiments.config import Config, override`` in user scripts keeps working.
"""

from lm.config import (  # noqa: F401
    ALIASES,
    Config,
    RunCfg,
    flat_keys,
    override,
    to_dict,
)
