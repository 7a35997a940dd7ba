"""The analyzer's one error type for bad input: the CLI prints its message as one line and exits with code 2."""


class AnalysisInputError(ValueError):
    """Bad input to the analyzer (unknown task or model, empty data, label word not in the vocabulary, k too large,
    an output folder that cannot be written, ...). The message says what to change."""


__all__ = ["AnalysisInputError"]
