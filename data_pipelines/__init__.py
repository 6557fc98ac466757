"""Grain input pipelines for InstructBLIP instruction tuning and zero-shot evaluation.

Entry points (kept small; see each module's docstring):
- `pipeline.build_train_dataset(data_config, process_index=, process_count=)`: endless per-process
  batches (docs/CONTRACTS.md), iterator with get_state/set_state.
- `pipeline.build_eval_dataset(data_config, name, split, ...)`: padded batches + `valid` + `meta`.
- `demo_data.write_demo_dataset(root, num_train, num_eval, seed)`: the embedded demo data.
- `python -m data_pipelines.inspect` / `python -m data_pipelines.prepare`.

Modules: registry (datasets), formats (annotation parsers), sources (records / ArrayRecord),
templates (instructions), images, text (tokenizers), mixing, pipeline, demo_data.
"""
