"""CameNN on Spark: the model package (pure PyTorch, no pyspark)."""

__version__ = "0.1.0"

# Resolved on first use so that `import camenn` (e.g. in a Spark driver reading config) does not
# pay for importing torch, timm and transformers.
_LAZY = {
    "FeaturizerConfig": "camenn.featurizer",
    "ItemFeaturizer": "camenn.featurizer",
    "ImageDecodeError": "camenn.images",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camenn' has no attribute {name!r}")
