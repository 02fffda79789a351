"""`neuronspec study`: the paper's comparison as one resumable command (docs/design.md §11)."""
