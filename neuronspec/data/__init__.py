"""Data: languages, corpus layout, the built-in corpus, tokenizer, binarized data and batching
(docs/design.md §7). Imports nothing from nmt/, specialization/ or demo."""
