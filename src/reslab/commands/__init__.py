"""The `reslab` commands, one module each (wiring only: parse, call the packages, print).

Each module exposes `register(subparsers)`, which adds its parsers and sets `func`, a function of
the parsed arguments returning an exit status. Heavy imports (onnx, fastapi, torchvision) happen
inside the command functions, so building the parser stays cheap. `reslab.cli` imports every
module listed in `COMMAND_MODULES`; an import error there is a bug and fails loudly.
"""

COMMAND_MODULES = (
    "reslab.commands.models",  # models
    "reslab.commands.train",  # train, demo
    "reslab.commands.eval",  # eval
    "reslab.commands.calibrate",  # calibrate
    "reslab.commands.infer",  # predict, export, serve
    "reslab.commands.embed",  # embed
    "reslab.commands.push",  # push
    "reslab.commands.reproduce",  # reproduce, report
)
