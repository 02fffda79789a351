"""neuronspec: fast Neuron Specialization for multilingual machine translation."""
__version__ = "0.1.0"
