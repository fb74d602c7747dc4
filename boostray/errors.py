"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class BoostrayError(Exception):
    """Bad input: a wrong option, missing or malformed data, a tampered artifact."""


class ConfigError(BoostrayError):
    """An option or config key is invalid."""


class DataError(BoostrayError):
    """A data set is missing, empty or malformed."""


class ArtifactError(BoostrayError):
    """A run directory or ensemble artifact is incomplete or does not match its manifest."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Fail before any work starts when an optional dependency is missing, naming the extra to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs {module}, which is not installed: pip install 'boostray[{extra}]'")
