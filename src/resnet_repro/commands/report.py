"""`resnet-repro report RUN_DIR`: curves and a table next to the published figures, from a run folder; with
several run folders and --out, the runs side by side and their spread over seeds (compare.py)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import check_writable_folder


def add(sub) -> None:
    r = sub.add_parser("report", help="plots and a table next to published results, from a run folder; several "
                                      "run folders side by side, with their mean and spread over seeds")
    r.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    r.add_argument("--out", help="output folder (default RUN_DIR/report; with several runs, required)")
    r.add_argument("--quiet", action="store_true", help="do not print the Markdown report")
    r.set_defaults(func=run)


def run(args) -> int:
    from ..compare import write_comparison
    from ..report import ReportError, write_report

    several = len(args.run_dirs) > 1
    if several and not args.out:
        raise UserError(f"{len(args.run_dirs)} run folders: name the folder for their comparison with --out "
                        "(it gets curves.png and compare.md)")
    # The default folder too: a run folder on a read-only disk, or a file named `report` in it, must be one line
    # before the work, not an OSError after it.
    first = args.run_dirs[0]
    out = Path(args.out) if args.out else Path(first) / "report"
    what = f"--out {args.out}" if args.out else f"{out} (the default output folder; choose another with --out)"
    if args.out or Path(first).is_dir():  # else write_report names the missing run folder
        if out.exists() and not out.is_dir():
            raise UserError(f"{what} is a file; report writes a folder (curves.png, "
                            f"{'compare.md' if several else 'report.md'})")
        check_writable_folder(out, what)
    try:
        paths = write_comparison(args.run_dirs, out) if several else write_report(first, args.out)
    except ReportError as e:
        raise UserError(str(e)) from None
    if not args.quiet:
        print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['png']} and {paths['markdown']}")
    return 0
