"""campaign-runner: SMS campaigns as YAML in git, sent through Webex Connect exactly once."""

# The one place the version is written: pyproject.toml reads it (setuptools dynamic),
# `campaign --version` and saved plans print it.
__version__ = "0.1.0"
