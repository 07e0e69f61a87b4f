"""Build hook: the shipped int8 model travels in the wheel as package data (pi_search/data/models)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# models/ is the source of truth; the float32 model (13 MB) stays out of the wheel.
SHIPPED = ("efficientnet_lite0_int8.tflite", "MODEL_CARD.md")


class BuildPyWithModel(build_py):
    """build_py that also copies the shipped int8 model into the package's data folder."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads models/ of the checkout
        dest = Path(self.build_lib) / "pi_search" / "data" / "models"
        for name in SHIPPED:
            src = HERE / "models" / name
            if not src.is_file():
                raise SystemExit(f"error: {src} is missing; the package needs it")
            self.mkpath(str(dest))
            self.copy_file(str(src), str(dest / name))


setup(cmdclass={"build_py": BuildPyWithModel})
