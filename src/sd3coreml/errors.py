"""The one error type the library raises for problems a user can fix."""


class PipelineError(Exception):
    """A problem with the user's input, config or host.

    The message is one line that names the file or key and says how to fix it;
    the CLI prints it without a traceback and exits non-zero.
    """
