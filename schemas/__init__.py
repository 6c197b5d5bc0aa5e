"""Package data: the campaign JSON Schema, installed as `runner.schemas`."""
