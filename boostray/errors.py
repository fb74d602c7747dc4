"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class BoostrayError(Exception):
    """Bad input: a wrong option, missing or malformed data, a tampered artifact."""


class ConfigError(BoostrayError):
    """An option or config key is invalid."""


class DataError(BoostrayError):
    """A data set is missing, empty or malformed."""


class ArtifactError(BoostrayError):
    """A run directory or ensemble artifact is incomplete or does not match its manifest."""


class RunFailedError(Exception):
    """A run stopped for a reason outside its input (a lost node or worker, more failures than
    --max-failures allows): the CLI prints it as one line, saying how to resume, and exits with code 1."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Fail before any work starts when an optional dependency is missing, naming the extra to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs {module}, which is not installed: pip install 'boostray[{extra}]'")
