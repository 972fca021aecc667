"""What every command of the orchestration half shares, written once: the base of every error reported as one line
(errors.py), the atomic file write and the marker of what the tool made (io.py), the lock of a work directory
(lock.py), the subprocess runner that keeps a log and the place of each fairseq tool (proc.py), the Markdown table
(markdown.py), the command-line pieces: the one-line argparse parser, the split of flags after `--`, positive
integers, and the main wrapper that turns errors into exit statuses (cli.py); USER_DIR (paths.py) and what the old
module names became (moved.py).

Nothing here imports torch or fairseq.
"""
