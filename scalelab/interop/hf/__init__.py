"""scalelab models as Hugging Face Llama directories and back: the config mapping and the weights
(`convert.py`), whole directories: export, import and `init_from=hf:DIR` (`directory.py`). The
tokenizer files are the data layer's own format (`scalelab.data.tokenizer_files`), written into
an exported directory as they are."""
