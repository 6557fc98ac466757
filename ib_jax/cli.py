"""`ib_jax.cli` is `ib_jax.contract.cli` (flags, quiet console, one-line failures), kept under the
name every entry point imports; the module lives in the contract layer so that the data tools
(`data_pipelines.*`, which may import only `ib_jax.contract`) share it."""

import sys

from ib_jax.contract import cli

sys.modules[__name__] = cli
