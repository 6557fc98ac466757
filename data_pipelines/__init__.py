"""Grain input pipelines for InstructBLIP instruction tuning and zero-shot evaluation.

Entry points (kept small; see each module's docstring):
- `train_pipeline.build_train_dataset(data_config, process_index=, process_count=)`: endless
  per-process batches (docs/CONTRACTS.md), iterator with get_state/set_state.
- `eval_pipeline.build_eval_dataset(data_config, name, split, ...)`: padded batches + `valid` +
  `meta`.
- `python -m data_pipelines.preview` / `python -m data_pipelines.prepare`, both with the run
  config training takes (`--config=configs/demo.py`).

Modules, from the files to the batch: registry (the datasets), formats/ (annotation parsers, one
module per dataset family), sources (records from annotation files, TFDS datasets or a
generator such as the demo's), templates (instructions), images, text (tokenizers), preprocess
(one example -> arrays; the table of data-config defaults), mixing, train_pipeline,
eval_pipeline; demo_data renders the embedded demo, prepare writes TFDS datasets
(tfds_data: their feature spec, builder and reader).
"""
