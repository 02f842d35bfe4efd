"""Virtualenvs for the peers, created once under the state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PEERS = {"quix": ["quixstreams==3.28.1"], "oldstyle": ["pandas>=2.2", "psycopg[binary]>=3.2"]}


def peer_python(state_dir: Path, name: str) -> Path:
    """The python of the peer's virtualenv, created and filled on first use."""
    venv = state_dir / "peer-venvs" / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(PEERS[name])
    if not stamp.is_file() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
        stamp.write_text(wanted)
    return python
