"""campaign-runner: SMS campaigns as YAML in git, sent through Webex Connect exactly once."""

__version__ = "0.1.0"
