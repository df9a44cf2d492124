"""User-facing errors: each names the file, the YAML path and what is allowed."""

from __future__ import annotations

from pathlib import Path


class UserInputError(ValueError):
    """Bad input from the user: the CLI prints it on one line and exits with code 2."""


class SpecError(UserInputError):
    def __init__(self, file: Path | str, yaml_path: str, message: str) -> None:
        self.file = str(file)
        self.yaml_path = yaml_path
        self.message = message
        where = f" at `{yaml_path}`" if yaml_path else ""
        super().__init__(f"{self.file}{where}: {message}")


class TrialFailure(RuntimeError):
    """A trial stopped for a recorded reason (non-finite loss, exception) at an epoch."""

    def __init__(self, reason: str, epoch: int) -> None:
        self.reason = reason
        self.epoch = epoch
        super().__init__(f"epoch {epoch}: {reason}")
