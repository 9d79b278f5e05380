"""Other tools' formats: Hugging Face model directories (`hf/`)."""
