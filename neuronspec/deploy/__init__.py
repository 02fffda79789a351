"""Deploy a specialized model (issue #30): per-direction pruned exports (`prune`, `native`, `hf_prune`),
native → Hugging Face M2M100 conversion (`hf_export`) and the CTranslate2 engine (`ct2`).

Only the modules a call needs are imported (transformers and ctranslate2 are optional extras)."""
