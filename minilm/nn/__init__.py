"""Neural-network modules: ``import minilm.nn as nn``."""
from . import init
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential, StateDictError, functional_call

__all__ = ["Module", "Parameter", "StateDictError", "Sequential", "ModuleList", "ModuleDict",
           "Linear", "Embedding", "LayerNorm", "Dropout", "GELU", "init", "functional_call"]
