"""Imported at start-up by every Python process whose PYTHONPATH holds this directory (tests/standin_data.py's
``standin_env``). With LIMIT_STANDIN_CHECKSUMS naming the checksums that ``standin_data.write_cifar`` recorded,
torchvision's CIFAR classes check the stand-in files against those instead of the real files' checksums, as the
in-process tests do with monkeypatch. torchvision itself is not imported here: the checksums are set when a
process imports its CIFAR module."""
import json
import os
import sys
from importlib.machinery import PathFinder

CIFAR_MODULE = "torchvision.datasets.cifar"


class StandinCifarChecksums:
    """A meta path finder that finds only torchvision's CIFAR module, and sets its checksums once it is loaded."""

    def __init__(self, path):
        self.path = path

    def find_spec(self, name, path, target=None):
        if name != CIFAR_MODULE:
            return None
        spec = PathFinder.find_spec(name, path, target)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            if not os.path.exists(self.path):  # no stand-in CIFAR written
                return
            with open(self.path) as f:
                for class_name, attributes in json.load(f).items():
                    for attribute, value in attributes.items():
                        setattr(getattr(module, class_name), attribute, value)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("LIMIT_STANDIN_CHECKSUMS"):
    sys.meta_path.insert(0, StandinCifarChecksums(os.environ["LIMIT_STANDIN_CHECKSUMS"]))
