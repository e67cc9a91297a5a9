"""One module per ``resnet-repro`` subcommand, each holding the command's arguments (``add(sub)``: its subparser)
and its handler (``run(args)``: the options turned into a call of the module that does the work, imported only then,
so that ``--help`` and argument errors stay fast). ``common`` holds what several commands share: the checks of an
output file and of a device before any work, writing a JSON result, the trained model the options name.

cli.py lists the commands (``COMMANDS``) and runs the one asked for.
"""
