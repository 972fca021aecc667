"""The one error class of the orchestration half.

A command that meets bad input (a missing file, an unknown name, a refused flag) or a failed step raises
OneLineError before any work starts, or as soon as the failure is known; util.cli.run_main prints it as one line,
`PROG: error: MESSAGE`, and exits with its status.  The message names the flag or file to fix.  Nothing else is
reported to the user as an error: any other exception is a bug and keeps its traceback.
"""


class OneLineError(Exception):
    """Bad input, or a failure the user can act on; printed as one line, exit status `exit_code` (2, as argparse
    uses for bad input, unless a subclass or the raiser says otherwise)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class StepFailed(OneLineError):
    """A step that was started (a fairseq tool, a prepare step) failed; the message names its log.  Exit status 1,
    or 2 when the tool itself refused the command line it was given (bad input passed through to it)."""

    exit_code = 1
