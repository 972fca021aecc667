"""The one base of every error the user is meant to read.

A command that meets bad input (a missing file, an unknown name, a refused flag) or a failed step raises a
OneLineError before any work starts, or as soon as the failure is known; util.cli.run_main prints it as one line,
`PROG: error: MESSAGE`, and exits with its status, and inside fairseq's own tools the plugin's error hook
(patches/one_line_errors.py) does the same.  The message names the flag or file to fix.  Every user-facing refusal
derives from it: AttentionConfigError (modules/registry.py), ConversionError (checkpoints/convert.py),
PlanMismatch (checkpoints/plan.py), CheckpointRefused (patches/unsafe_checkpoints.py), EvalLMRefused
(patches/tool_refusals.py), BenchmarkError (bench/common.py) and StepFailed below.  Nothing else is reported to the
user as an error: any other exception is a bug and keeps its traceback.
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
