"""`resnet-repro report RUN_DIR`: curves and a table next to the published figures, from a run folder."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import check_writable_folder


def add(sub) -> None:
    r = sub.add_parser("report", help="plots and a table next to published results, from a run folder")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", help="output folder (default RUN_DIR/report)")
    r.add_argument("--quiet", action="store_true", help="do not print the Markdown report")
    r.set_defaults(func=run)


def run(args) -> int:
    from ..report import ReportError, write_report

    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file; report writes a folder (curves.png, report.md)")
        check_writable_folder(Path(args.out), f"--out {args.out}")
    try:
        paths = write_report(args.run_dir, args.out)
    except ReportError as e:
        raise UserError(str(e)) from None
    if not args.quiet:
        print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['png']} and {paths['markdown']}")
    return 0
