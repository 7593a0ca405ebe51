"""archscale: architecture search and scaling-law fitting for inference-efficient LLMs.

The repository's source folders (arch/, sweeps/, search/, laws/, cli/) are mapped into this one
namespace by pyproject.toml's [tool.setuptools.package-dir].
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("archscale")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
