"""Share the DVC run cache whole, so a colleague's ``dvc exp run --pull`` restores an experiment
someone already ran instead of training it again.

``dvc push --run-cache`` sends the run-cache entries (``.dvc/cache/runs``: a stage's command, deps
and params hashes, and its outputs' hashes), and ``dvc push`` the cached outputs named in
``dvc.lock``. Neither sends the files of a run that git keeps (metrics and plots with
``cache: false``, such as ``models/run.json``), which DVC's run cache copies into the local cache
when it saves an entry: the colleague's DVC finds the entry, misses those outputs and runs the stage
(DVC 3.67; run-cache push "doesn't push anything except the runs files", treeverse/dvc#10472).

``python -m imgclf.remote push`` (``make push``) is ``dvc push --run-cache`` plus the outputs of
every local run-cache entry, through DVC's own API. Pulling needs nothing of ours:
``dvc repro --pull`` and ``dvc exp run --pull`` fetch the entries and their outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.io import PipelineError


def push(root: Path, remote: str | None = None) -> tuple[int, int]:
    """Push the workspace's outputs, the run cache and its outputs to ``remote`` (the default remote
    when None). Returns (run-cache entries, objects of theirs sent now)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.push(remote=remote, run_cache=True)
            runs = Path(repo.stage_cache.cache_dir)
            entries = [(path.parent.name, path.name) for path in runs.glob("*/*/*") if path.is_file()]
            sent = 0
            for objects in repo.stage_cache.get_used_objs(entries).values():
                result = repo.cloud.push(objects, remote=remote)
                if result.failed:
                    raise PipelineError(f"{len(result.failed)} run-cache outputs could not be pushed")
                sent += len(result.transferred)
    except DvcException as error:
        raise PipelineError(f"dvc push: {str(error).strip().splitlines()[0]}") from None
    return len(entries), sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.remote", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("push", help="dvc push --run-cache, and the run cache's outputs")
    command.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    args = parser.parse_args(argv)
    try:
        entries, sent = push(Path.cwd(), args.remote)
    except PipelineError as error:
        print(f"push: error: {error}", file=sys.stderr)
        return 1
    print(f"pushed: outputs, {entries} run-cache entries and {sent} files of theirs not yet in the remote")
    return 0


if __name__ == "__main__":
    sys.exit(main())
