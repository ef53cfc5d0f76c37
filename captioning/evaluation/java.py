"""METEOR and SPICE: the jars pycocoevalcap ships, run only when Java and the jars are there."""

import importlib.util
import shutil
import subprocess
import threading
from pathlib import Path


def pycocoevalcap_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def meteor_jar() -> tuple[str, Path] | str:
    """(java, jar) or the reason METEOR cannot run."""
    java = shutil.which("java")
    if java is None:
        return "no `java` executable on PATH (METEOR runs pycocoevalcap's meteor-1.5.jar, which needs Java)"
    package = pycocoevalcap_dir()
    if package is None:
        return "pycocoevalcap is not installed (`pip install pycocoevalcap` ships meteor-1.5.jar)"
    jar = package / "meteor" / "meteor-1.5.jar"
    if not jar.is_file() or not (jar.parent / "data" / "paraphrase-en.gz").is_file():
        return f"{jar} or its data/paraphrase-en.gz is missing"
    return java, jar


class Meteor:
    """A meteor-1.5.jar process driven as pycocoevalcap/meteor/meteor.py drives it (same command, same protocol).

    Per image a ``SCORE ||| ref ||| ... ||| hyp`` line returns sufficient statistics; one ``EVAL ||| stats ||| ...``
    line returns each image's score and then the corpus METEOR, which is what pycocoevalcap reports. One process
    can evaluate several sets (human_agreement's rounds) and pays the jar's start-up (~5 s) once.
    """

    def __init__(self, java: str, jar: Path):
        command = [java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._process = subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=lambda: self._stderr.extend(self._process.stderr), daemon=True)
        self._stderr_reader.start()

    def _readline(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=30)
            self._stderr_reader.join(timeout=5)
            tail = b"".join(self._stderr).decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"meteor-1.5.jar exited with status {self._process.returncode}: {tail}")
        return line.decode().strip()

    def _write(self, lines: list[str]) -> None:
        try:
            for line in lines:
                self._process.stdin.write(f"{line}\n".encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader sees the process end and reports its stderr

    def score(self, hypotheses: list[str], references: list[list[str]]) -> float:
        # meteor.py's _stat: the hypothesis loses "|||" and double spaces; the references are sent as they are.
        lines = [
            " ||| ".join(("SCORE", " ||| ".join(refs), hypothesis.replace("|||", "").replace("  ", " ")))
            for hypothesis, refs in zip(hypotheses, references, strict=True)
        ]
        # A writer thread feeds the SCORE lines while we read the answers, so neither pipe can fill up and block.
        writer = threading.Thread(target=self._write, args=(lines,), daemon=True)
        writer.start()
        stats = [self._readline() for _ in lines]
        writer.join()
        self._write(["EVAL ||| " + " ||| ".join(stats)])
        for _ in lines:
            self._readline()  # per-image scores
        return float(self._readline())

    def close(self) -> None:
        try:
            self._process.stdin.close()
            self._process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def spice_ready() -> str | None:
    """None when SPICE can run, else the reason it cannot."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (SPICE runs pycocoevalcap's spice-1.0.jar, which needs Java)"
    package = pycocoevalcap_dir()
    if package is None:
        return "pycocoevalcap is not installed (`pip install pycocoevalcap` ships spice-1.0.jar)"
    lib = package / "spice" / "lib"
    jars = [package / "spice" / "spice-1.0.jar"]
    jars += [lib / name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        # pycocoevalcap's Spice() would download CoreNLP 3.6.0 at this point; we never reach for the network.
        return f"missing {', '.join(missing)} (pycocoevalcap downloads Stanford CoreNLP 3.6.0 on first use)"
    return None


def spice_score(hypotheses: list[str], references: list[list[str]]) -> float:
    from pycocoevalcap.spice.spice import Spice  # the field's scorer, used as is once its jars are present

    ids = list(range(len(hypotheses)))
    score, _ = Spice().compute_score(
        dict(zip(ids, references, strict=True)),
        {i: [hyp] for i, hyp in zip(ids, hypotheses, strict=True)},
    )
    return float(score)
