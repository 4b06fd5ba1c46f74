"""The error raised for ViewDefinitions that cannot be compiled."""

from pipelines.common.errors import ConfigError


class ViewDefinitionError(ConfigError, ValueError):
    """A ViewDefinition is malformed, uses unsupported FHIRPath, or would produce unsafe SQL.

    It is a ConfigError so that a bad shipped view stops a run with the configuration exit status.
    """
