"""The entry point of installs made before the examples' commands moved to examples/cli.py
(``fraud-example = "examples.fraud.cli:register"``): reinstalling (`pip install -e .`) switches
to ``examples = "examples.cli:register"``, after which this module can go."""

from examples.cli import register  # noqa: F401
