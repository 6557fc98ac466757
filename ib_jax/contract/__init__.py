"""The contract layer: the facts the data side and the model side share, and nothing else.

The batch contract (`batch`: keys, shapes, `IGNORE_INDEX`), the text conventions of each language-
model family (`text`: `TextFormat` by `config.model.lm_type`), the metric names (`metrics`) and the
typed sections of a run config (`config`) live here, so that `data_pipelines` and the models each
import this layer and never each other. It is a leaf: it imports nothing else of the project and
no ML framework (jax, numpy, torch), so that importing it (from a data worker, a config file)
stays cheap; tests/test_imports.py keeps it that way.
"""
