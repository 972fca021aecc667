"""What every command of the orchestration half shares, written once: the error it reports as one line
(errors.py), the atomic file write and the marker of what the tool made (io.py), the lock of a work directory
(lock.py), the subprocess runner that keeps a log (proc.py), and the command-line
pieces: the one-line argparse parser, the split of flags after `--`, positive integers, and the main wrapper that
turns errors into exit statuses (cli.py).

Nothing here imports torch or fairseq.
"""
