"""Where the plugin is: USER_DIR, the directory to pass to fairseq's --user-dir (this package's own)."""
import os

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
