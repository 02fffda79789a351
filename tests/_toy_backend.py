"""A toy backend for tests/test_backends.py: the reference's math under another name. With
`BACKENDS["toy"] = "_toy_backend"` (one line) it is a backend like any other."""
from neuronspec.ops import reference
from neuronspec.ops.backends import ALL_FLOATS, Caps

CAPS = Caps(dtypes={"cpu": ALL_FLOATS}, activations=("relu", "gelu"), counting=True)
backward, act_count = reference.backward, reference.act_count
CALLS: list[int] = []  # tokens of every forward it ran


def forward(x, weights, plan, opts):
    CALLS.append(x.shape[0])
    return reference.forward(x, weights, plan, opts)
