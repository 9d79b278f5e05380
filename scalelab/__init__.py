"""scalelab: language-model scaling studies in JAX (see README.md).

The package's top level imports nothing, so that `import scalelab` and `scalelab --help` stay fast;
pyproject.toml reads the version from here.
"""

__version__ = "0.1.0"
